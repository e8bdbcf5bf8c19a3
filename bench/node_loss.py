"""How long a worker node's loss takes to reach the readers of its runs (README, "Placement").

    .venv/bin/python -m bench.node_loss [--runs-per-worker 2] [--repeat 3]

A head and two workers with run slots on this machine (`ray.cluster_utils.Cluster`); hanging
fake runs spread over both workers, each followed by a reader (`RegistryClient.follow`, the path
the ingress takes). One worker is killed (its raylet and workers SIGKILLed, no drain); the time
from the kill to each of its readers' last frame is reported, in seconds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from rayruns.actors.client import RegistryClient
from rayruns.actors.settings import ActorSettings
from rayruns.actors.spec import RunSpec
from rayruns.providers.settings import ProviderSettings

NAMESPACE = "rayruns-node-loss"


async def one_loss(cluster: Cluster, client: RegistryClient, per_worker: int) -> dict[str, Any]:
    workers = [
        cluster.add_node(num_cpus=1, resources={"rayruns_run": per_worker}) for _ in range(2)
    ]
    spec = RunSpec(
        messages=[{"role": "user", "content": "one two three"}],
        provider_options={"hang_after": 1},
    )
    started = [await client.create_run(spec) for _ in range(2 * per_worker)]
    nodes = [await actor.node_id.remote() for _, actor in started]
    ended: dict[str, float] = {}
    first: dict[str, asyncio.Event] = {run.id: asyncio.Event() for run, _ in started}

    async def read(run_id: str, actor: Any) -> None:
        async for _batch in client.follow(run_id, 0, actor):
            first[run_id].set()
        ended[run_id] = time.perf_counter()

    readers = [asyncio.create_task(read(run.id, actor)) for run, actor in started]
    for event in first.values():
        await event.wait()
    lost = workers[0]
    killed = time.perf_counter()
    cluster.remove_node(lost, allow_graceful=False)
    lost_ids = [
        run.id for (run, _), node in zip(started, nodes, strict=True) if node == lost.node_id
    ]
    await asyncio.gather(
        *(r for r, (run, _) in zip(readers, started, strict=True) if run.id in lost_ids)
    )
    seconds = [ended[run_id] - killed for run_id in lost_ids]
    for run, _ in started:
        if run.id not in lost_ids:
            await client.cancel(run.id)
    await asyncio.gather(*readers)
    cluster.remove_node(workers[1])
    return {"lost_runs": len(lost_ids), "seconds_to_last_frame": [round(s, 2) for s in seconds]}


async def measure(per_worker: int, repeat: int) -> dict[str, Any]:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        settings = ActorSettings(
            namespace=NAMESPACE, db_path=Path(tempfile.mkdtemp()) / "runs.sqlite3", pool_size=0
        )
        client = RegistryClient.connect(settings, ProviderSettings())
        client.wait_ready()
        rounds = [await one_loss(cluster, client, per_worker) for _ in range(repeat)]
    finally:
        ray.shutdown()
        cluster.shutdown()
    every = [s for r in rounds for s in r["seconds_to_last_frame"]]
    return {
        "rounds": rounds,
        "seconds_median": round(statistics.median(every), 2),
        "seconds_max": round(max(every), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs-per-worker", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.runs_per_worker, args.repeat)), indent=2))


if __name__ == "__main__":
    main()
