"""Push against read, the frame road alone: CPU per frame and frame latency, no HTTP.

    python -m bench.transport [--streams 20] [--frames 150] [--rounds 2]

Starts its own local Ray (2 CPUs), then alternates the two transports over the same load:
`streams` fake runs at 50 frames/s (`delay_s: 0.02`, `stamp: true`), each followed by one reader
in this driver through `RegistryClient.follow` (push: the run actor writes to this process's
sink; read: one `RunActor.read` Ray call per batch). CPU is user + system time of the run
actors (their pids from `ping`) and of this driver over the round, so the rest of a shared
machine does not count; latency is the driver's clock when a frame arrives minus the stamp.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import ray

from bench.stats import summary
from rayruns.actors.client import RegistryClient
from rayruns.actors.placement import local_resources
from rayruns.actors.settings import ActorSettings
from rayruns.actors.spec import RunSpec
from rayruns.providers.settings import ProviderSettings


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


async def one_round(client: RegistryClient, streams: int, frames: int) -> dict[str, Any]:
    text = " ".join("w" for _ in range(frames))
    spec = RunSpec(
        messages=[{"role": "user", "content": text}],
        provider_options={"delay_s": 0.02, "stamp": True},
    )
    latencies: list[float] = []
    delivered = 0
    cpu_before: dict[int, float] = {}

    async def one_stream() -> None:
        nonlocal delivered
        run, actor = await client.create_run(spec)
        pid = await actor.ping.remote()
        cpu_before[pid] = _cpu_s([pid])
        async for batch in client.follow(run.id, 0, actor):
            now = time.time()
            for frame in batch:
                delivered += 1
                # The first frames waited for this reader to start: not the transport's doing.
                if frame.message_type == "assistant_message" and frame.seq_id > 10:
                    stamp = json.loads(frame.data)["content"]
                    latencies.append((now - float(stamp)) * 1000)

    own_cpu = _own_cpu_s()
    t0 = time.perf_counter()
    await asyncio.gather(*(one_stream() for _ in range(streams)))
    wall = time.perf_counter() - t0
    own_cpu = _own_cpu_s() - own_cpu
    actors_cpu = sum(_cpu_s([pid]) - before for pid, before in cpu_before.items())
    return {
        "frames": delivered,
        "wall_s": round(wall, 2),
        "actors_cpu_ms_per_frame": round(actors_cpu / delivered * 1000, 4),
        "reader_cpu_ms_per_frame": round(own_cpu / delivered * 1000, 4),
        "cpu_ms_per_frame": round((actors_cpu + own_cpu) / delivered * 1000, 4),
        "latency_ms": summary(latencies),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = ActorSettings(
        namespace="rayruns-bench-transport",
        pool_size=args.streams,
        db_path=Path(tempfile.mkdtemp(prefix="rayruns-bench-transport-")) / "runs.sqlite3",
    )
    registry = RegistryClient.connect(settings, ProviderSettings())
    registry.wait_ready()
    clients = {
        transport: RegistryClient(
            registry.handle, settings.model_copy(update={"frame_transport": transport})
        )
        for transport in ("push", "read")
    }
    await one_round(clients["push"], args.streams, 10)  # warm the pool and the sink
    rounds: dict[str, list[dict[str, Any]]] = {"push": [], "read": []}
    for _ in range(args.rounds):
        for transport, client in clients.items():
            rounds[transport].append(await one_round(client, args.streams, args.frames))
    best = {t: min(r, key=lambda x: x["cpu_ms_per_frame"]) for t, r in rounds.items()}
    return {
        "streams": args.streams,
        "frames_per_stream": args.frames,
        "push_cpu_ms_per_frame": best["push"]["cpu_ms_per_frame"],
        "read_cpu_ms_per_frame": best["read"]["cpu_ms_per_frame"],
        "push_latency_p99_ms": best["push"]["latency_ms"]["p99"],
        "read_latency_p99_ms": best["read"]["latency_ms"]["p99"],
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    ray.init(
        num_cpus=2,
        resources=local_resources(ActorSettings()),
        include_dashboard=False,
        address="local",
        log_to_driver=False,
    )
    try:
        result = asyncio.run(main_async(args))
    finally:
        ray.shutdown()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
