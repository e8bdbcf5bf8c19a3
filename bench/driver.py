"""A Ray driver joined to the bench's cluster: the batch API, and a pooled actor's memory.

    python -m bench.driver '{"scenario": "batch", "address": "127.0.0.1:6379", "n": 1000}'

prints one JSON object. Settings (namespace, registry name) come from the same `RAYRUNS_*`
environment as the server's.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import time
from typing import Any

import psutil
import ray

from rayruns.actors.runs import Runs


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _request() -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "bench"}],
        "provider_options": {"text": "alpha beta gamma"},
    }


async def batch(runs: Runs, spec: dict[str, Any]) -> dict[str, Any]:
    """`n` zero-delay fake runs through `Runs.run_batch`: runs per second, wall clock."""
    n, concurrency = int(spec.get("n", 1000)), int(spec.get("concurrency", 16))
    warmup = int(spec.get("warmup", 50))
    if warmup:
        await runs.run_batch([_request()] * warmup, concurrency=concurrency)
    t0, c0 = time.perf_counter(), _cpu_s()
    results = await runs.run_batch([_request()] * n, concurrency=concurrency)
    elapsed = time.perf_counter() - t0
    failed = [r for r in results if r.status != "completed"]
    durations = [r.duration_ms for r in results if r.duration_ms is not None]
    return {
        "runs": n,
        "concurrency": concurrency,
        # Only completed runs count: a failed one is reported, not a run per second.
        "runs_per_s": round((n - len(failed)) / elapsed, 1),
        "failures": len(failed),
        "failure_examples": [f"{r.status}: {r.error}" for r in failed[:3]],
        "run_ms_p50": round(statistics.median(durations), 2) if durations else None,
        "driver_cpu_pct": round((_cpu_s() - c0) / elapsed * 100, 1),
    }


async def idle_uss(runs: Runs, spec: dict[str, Any]) -> dict[str, Any]:
    """USS of the idle pooled run actors (pids from `ping`), in MB: the median is reported."""
    namespace = spec["namespace"]
    deadline = time.monotonic() + 60
    names: list[str] = []
    while time.monotonic() < deadline:
        names = (await runs.client.actor_names())["idle"]
        if names:
            break
        await asyncio.sleep(0.5)
    sizes: list[float] = []
    for name in names[: int(spec.get("max_actors", 32))]:
        pid = await ray.get_actor(name, namespace=namespace).ping.remote()
        sizes.append(psutil.Process(pid).memory_full_info().uss / 2**20)
    return {
        "idle_actors": len(names),
        "measured": len(sizes),
        "uss_mb": [round(s, 1) for s in sizes],
        "uss_mb_median": round(statistics.median(sizes), 1) if sizes else None,
        "uss_mb_max": round(max(sizes), 1) if sizes else None,
    }


async def idle_uss_by_provider(_runs: Runs, _spec: dict[str, Any]) -> dict[str, Any]:
    """USS of an idle run actor after one run through each provider (the vendors' SDKs against
    the local wire-format servers): what a pooled actor weighs once it has served that vendor."""
    from bench.actor_memory import measure

    by_provider = await measure()
    vendors = {k: v for k, v in by_provider.items() if k != "bare"}
    return {"uss_mb": by_provider, "uss_mb_max": max(vendors.values())}


SCENARIOS = {"batch": batch, "idle_uss": idle_uss, "idle_uss_by_provider": idle_uss_by_provider}


def main() -> None:
    spec = json.loads(sys.argv[1])
    ray.init(
        address=spec["address"],
        namespace=spec["namespace"],
        include_dashboard=False,
        log_to_driver=False,
    )
    runs = Runs.connect()
    try:
        result = asyncio.run(SCENARIOS[spec["scenario"]](runs, spec))
    finally:
        ray.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
