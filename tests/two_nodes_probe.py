"""A program (`python -m tests.two_nodes_probe`): a two-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`), a run actor pinned to the second node, its frames followed by this
driver on the first through its sink. Prints one JSON line with what the test checks.

It runs in its own process because the test session already has its Ray.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rayruns.actors.reader import live_batches
from rayruns.actors.remote import RUN_ACTOR_OPTIONS, RemoteRunActor
from rayruns.actors.sink import FrameSink
from rayruns.actors.spec import RunSpec
from rayruns.providers.settings import ProviderSettings


async def probe(second_node: str) -> dict[str, Any]:
    options = {k: v for k, v in RUN_ACTOR_OPTIONS.items() if k != "lifetime"}
    actor = RemoteRunActor.options(
        **options, scheduling_strategy=NodeAffinitySchedulingStrategy(second_node, soft=False)
    ).remote(ProviderSettings())
    run_id = f"run-{uuid.uuid4().hex}"
    text = " ".join(f"w{n}" for n in range(40))
    spec = RunSpec(
        messages=[{"role": "user", "content": text}], provider_options={"delay_s": 0.005}
    )
    await actor.start.remote(run_id, spec)
    sink = await FrameSink.for_this_loop(1024 * 1024, 64)
    frames = [f async for batch in live_batches(actor, run_id, 0, sink) for f in batch]
    finished = await actor.result.remote(run_id)
    return {
        "driver_node": ray.get_runtime_context().get_node_id(),
        "actor_node": second_node,
        "sink_node": sink.address.node_id,
        "seq_ids": [f.seq_id for f in frames],
        "same_as_log": frames == finished.frames,
        "kinds": [f.message_type for f in frames],
        "accepted": sink.accepted,
        "cut_short": sink.cut_short,
    }


def main() -> None:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    second = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        result = asyncio.run(probe(second.node_id))
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
