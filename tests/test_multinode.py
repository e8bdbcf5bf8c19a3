"""rayruns on a three-node Ray cluster on this machine: a head (registry, ingress, proxy; no run
slots) and two workers with run slots.

The module starts its own cluster, so it must not run beside the session's Ray: `make test` runs
it in a second pytest invocation (`pytest -m multinode`), and the default run deselects it. The
tests run in file order on one cluster: the node-loss test removes a worker, and the tests after
it see one worker left; the metrics test, last, finds what the others recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from rayruns.actors.client import RegistryClient
from rayruns.actors.handle import RunResult
from rayruns.actors.runs import Runs
from rayruns.actors.spec import RunSpec
from rayruns.serve_app.app import deployment
from rayruns.serve_app.settings import Settings
from tests.conftest import SSEStream, assert_well_formed, body, frames, open_sse

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(600)]

SLOTS_PER_WORKER = 2
# Generous: the machine may be loaded; nothing here asserts a duration.
WAIT_S = 180.0
NAMESPACE = "rayruns-multinode"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ClusterUnderTest:
    cluster: Cluster
    head: Any
    workers: list[Any]  # ray._private.node.Node of each live worker
    metrics_ports: list[int]  # every node's Prometheus endpoint, removed nodes' included
    settings: Settings
    base_url: str

    def worker_ids(self) -> set[str]:
        return {w.node_id for w in self.workers}


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterUnderTest]:
    assert not ray.is_initialized(), (
        "the multi-node tests start their own Ray cluster: run them apart, `pytest -m multinode`"
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ports = [_free_port() for _ in range(3)]
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": False,
            "metrics_export_port": ports[0],
            # Metrics reach the nodes' endpoints each second rather than every ten.
            "_system_config": {"metrics_report_interval_ms": 1000},
        },
    )
    workers = [
        cluster.add_node(
            num_cpus=1, resources={"rayruns_run": SLOTS_PER_WORKER}, metrics_export_port=port
        )
        for port in ports[1:]
    ]
    settings = Settings.from_env()
    settings.actors.namespace = NAMESPACE
    settings.actors.db_path = Path(tmp_path_factory.mktemp("db")) / "runs.sqlite3"
    settings.actors.pool_size = 0  # each run places a fresh actor: placement is what is tested
    settings.actors.cancel_grace_s = 30.0
    settings.serve.port = _free_port()
    settings.serve.ping_interval_s = 0.5
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        RegistryClient.connect(settings.actors, settings.providers).wait_ready()
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": "127.0.0.1", "port": settings.serve.port},
        )
        serve.run(deployment(settings), name=settings.serve.app_name, route_prefix="/")
        yield ClusterUnderTest(
            cluster,
            cluster.head_node,
            workers,
            ports,
            settings,
            f"http://127.0.0.1:{settings.serve.port}",
        )
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def registry(three_nodes: ClusterUnderTest) -> RegistryClient:
    return RegistryClient.connect(three_nodes.settings.actors, three_nodes.settings.providers)


@pytest.fixture
async def http(three_nodes: ClusterUnderTest) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=three_nodes.base_url, timeout=WAIT_S) as client:
        yield client


def hanging(text: str = "one two three four") -> dict[str, Any]:
    """A run that streams two words, then waits until it is cancelled or its node dies."""
    return body(text, provider_options={"hang_after": 2}, include_pings=False)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds (for what the cluster does in the background, with nothing
    to await from outside), up to WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while True:
            if await check():
                return
            await asyncio.sleep(0.1)


async def node_of(registry: RegistryClient, run_id: str) -> str:
    _, actor = await registry.source(run_id)
    assert actor is not None, f"{run_id} is not live"
    node: str = await actor.node_id.remote()
    return node


@dataclass
class OpenRun:
    stream: SSEStream
    cm: Any
    node: str

    @property
    def run_id(self) -> str:
        return self.stream.run_id

    async def finish(self) -> list[Any]:
        try:
            async with asyncio.timeout(WAIT_S):
                await self.stream.rest()
        finally:
            await self.cm.__aexit__(None, None, None)
        return self.stream.seen


async def open_runs(http: httpx.AsyncClient, registry: RegistryClient, n: int) -> list[OpenRun]:
    """`n` hanging runs streamed through the head's ingress, each past its first frame."""
    opened: list[OpenRun] = []
    for _ in range(n):
        stream, cm = await open_sse(http, "POST", "/v1/runs", json=hanging())
        first = await stream.next_frame()
        assert first.json["message_type"] == "assistant_message", first.json
        opened.append(OpenRun(stream, cm, await node_of(registry, stream.run_id)))
    return opened


async def cancel_all(http: httpx.AsyncClient, runs: list[OpenRun]) -> None:
    for run in runs:
        answer = await http.post(f"/v1/runs/{run.run_id}/cancel")
        assert answer.status_code == 200, answer.text
    for run in runs:
        events = await run.finish()
        assert_well_formed(events)
        assert frames(events)[-2]["stop_reason"] == "cancelled"


async def test_runs_land_on_the_workers_and_stream_through_the_head(
    three_nodes: ClusterUnderTest, http: httpx.AsyncClient, registry: RegistryClient
) -> None:
    runs = await open_runs(http, registry, 2 * SLOTS_PER_WORKER)
    try:
        nodes = [run.node for run in runs]
        assert three_nodes.head.node_id not in nodes, "the head hosts no runs"
        # Spread, not packed: each worker holds its share of the slots.
        assert sorted(nodes.count(w) for w in three_nodes.worker_ids()) == [2, 2], nodes
    finally:
        await cancel_all(http, runs)


@contextlib.contextmanager
def second_registry(
    three_nodes: ClusterUnderTest, name: str, **changes: Any
) -> Iterator[RegistryClient]:
    """Another registry with its own settings, in its own namespace (so it leaves the first
    one's actors alone) and with its own database (one registry per database)."""
    first_db = three_nodes.settings.actors.resolved_db_path()
    settings = three_nodes.settings.actors.model_copy(
        update={
            "namespace": f"{NAMESPACE}-{name}",
            "db_path": first_db.with_name(f"{name}.sqlite3"),
            **changes,
        }
    )
    client = RegistryClient.connect(settings, three_nodes.settings.providers)
    client.wait_ready()
    try:
        yield client
    finally:
        ray.kill(client.handle, no_restart=True)


async def test_a_full_cluster_refuses_one_more_run(
    three_nodes: ClusterUnderTest, http: httpx.AsyncClient, registry: RegistryClient
) -> None:
    runs = await open_runs(http, registry, 2 * SLOTS_PER_WORKER)
    try:  # every slot is held by the runs above; this registry waits briefly for one
        with second_registry(three_nodes, "impatient", placement_timeout_s=3.0) as impatient:
            run, _ = await impatient.create_run(RunSpec.from_body(hanging()))
        assert run.status == "failed", run
        assert run.error is not None and run.error.error_type == "run_lost"
        assert f"all {2 * SLOTS_PER_WORKER:g} 'rayruns_run' slots" in run.error.message
    finally:
        await cancel_all(http, runs)


async def test_a_frozen_run_is_cancelled_once_and_its_late_loss_refused(
    three_nodes: ClusterUnderTest,
) -> None:
    with second_registry(three_nodes, "brief-grace", cancel_grace_s=1.0) as impatient:
        await frozen_run_cancelled(impatient)


async def frozen_run_cancelled(impatient: RegistryClient) -> None:
    run, actor = await impatient.create_run(RunSpec.from_body(hanging()))
    assert run.status == "created", run
    os.kill(await actor.ping.remote(), signal.SIGSTOP)  # the actor can no longer answer
    ended = await impatient.cancel(run.id)  # gives up after the grace and kills the actor
    assert ended is not None and ended.status == "cancelled", ended

    # The dead actor's loss then reaches the registry's watch: refused, the record unchanged.
    async def refused() -> bool:
        return (await impatient.stats())["refused_writes"] == 1

    await eventually(refused)
    assert (await impatient.get(run.id)) == ended


async def busy_actor_nodes(registry: RegistryClient, count: int) -> list[str]:
    """The nodes of the run actors once `count` runs are live."""
    busy: list[str] = []

    async def all_started() -> bool:
        nonlocal busy
        busy = (await registry.actor_names())["busy"]
        return len(busy) == count

    await eventually(all_started)
    handles = [ray.get_actor(name, namespace=NAMESPACE) for name in busy]
    return [await handle.node_id.remote() for handle in handles]


async def test_the_batch_engine_with_an_address_spreads_over_the_workers(
    three_nodes: ClusterUnderTest, registry: RegistryClient
) -> None:
    runs = Runs.connect(
        three_nodes.cluster.address, three_nodes.settings.actors, three_nodes.settings.providers
    )
    count = 2 * SLOTS_PER_WORKER
    specs = [hanging(f"item {n} of the batch") for n in range(count)]
    batch = asyncio.create_task(runs.run_batch(specs, concurrency=count))
    try:
        nodes = await busy_actor_nodes(registry, count)
        assert set(nodes) == three_nodes.worker_ids(), nodes
    finally:
        for run in await registry.list_runs(limit=1000):
            if not run.terminal:  # `created` or `running`: the batch's runs
                await registry.cancel(run.id)
        results: list[RunResult] = await asyncio.wait_for(batch, WAIT_S)
    assert [r.status for r in results] == ["cancelled"] * count


async def test_a_lost_worker_ends_its_runs_once_and_new_runs_go_to_the_survivor(
    three_nodes: ClusterUnderTest, http: httpx.AsyncClient, registry: RegistryClient
) -> None:
    runs = await open_runs(http, registry, 2 * SLOTS_PER_WORKER)
    lost_node, surviving = three_nodes.workers
    lost = [r for r in runs if r.node == lost_node.node_id]
    kept = [r for r in runs if r.node != lost_node.node_id]
    assert lost and kept, [r.node for r in runs]
    refused_before = (await registry.stats())["refused_writes"]

    three_nodes.cluster.remove_node(lost_node, allow_graceful=False)  # a crash, not a drain
    three_nodes.workers = [surviving]

    for run in lost:
        events = await run.finish()
        assert_well_formed(events)
        error, stop, _ = frames(events)[-3:]
        assert error["error_type"] == "run_lost", error
        assert stop["stop_reason"] == "error"
        record = await registry.get(run.run_id)
        assert record is not None and record.status == "failed"
        assert record.error is not None and record.error.error_type == "run_lost"
    # Ended once: no second terminal write was attempted and refused.
    assert (await registry.stats())["refused_writes"] == refused_before
    for run in kept:  # the other worker's runs never noticed
        assert (await registry.get(run.run_id)).status == "running"  # type: ignore[union-attr]
    await cancel_all(http, kept)

    # The survivor's slots, freed, take the new runs; the lost node's are gone with it.
    fresh = await open_runs(http, registry, SLOTS_PER_WORKER)
    try:
        assert {r.node for r in fresh} == {surviving.node_id}
    finally:
        await cancel_all(http, fresh)


def scrape(ports: list[int]) -> str:
    """Every live node's Prometheus endpoint, concatenated."""
    texts = []
    for port in ports:
        try:
            texts.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        except httpx.TransportError:
            continue  # a removed node
    return "\n".join(texts)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of `name` whose labels include `labels` (None: no sample)."""
    found = None
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? ([0-9.e+-]+)$", line)
        if match is None:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            found = (found or 0.0) + float(match.group(2))
    return found


async def test_metrics_reach_rays_prometheus_endpoints(
    three_nodes: ClusterUnderTest, http: httpx.AsyncClient
) -> None:
    # A refusal for load, answered by the ingress: a provider rate limit on Chat Completions.
    answer = await http.post(
        "/v1/chat/completions",
        json={
            "model": "fake/echo",
            "messages": [{"role": "user", "content": "hi"}],
            "provider_options": {"fail": "rate_limit"},
        },
    )
    assert answer.status_code == 429, answer.text
    wanted: list[tuple[str, dict[str, str]]] = [
        ("ray_rayruns_runs_started_total", {}),
        ("ray_rayruns_runs_ended_total", {"status": "cancelled", "stop_reason": "cancelled"}),
        ("ray_rayruns_runs_ended_total", {"status": "failed", "stop_reason": "error"}),
        ("ray_rayruns_refused_terminal_writes_total", {}),
        ("ray_rayruns_live_runs", {}),
        ("ray_rayruns_run_actors", {"state": "idle"}),
        ("ray_rayruns_run_actors", {"state": "busy"}),
        ("ray_rayruns_time_to_first_frame_seconds_count", {}),
        ("ray_rayruns_cancel_to_done_seconds_count", {}),
        ("ray_rayruns_frames_total", {}),
        ("ray_rayruns_http_responses_total", {"status": "429"}),
    ]
    missing = wanted
    # Nodes export on a timer: polled, with a deadline.
    async with asyncio.timeout(WAIT_S):
        while missing:
            text = await asyncio.to_thread(scrape, three_nodes.metrics_ports)
            missing = [(n, labels) for n, labels in missing if sample(text, n, **labels) is None]
            if missing:
                await asyncio.sleep(1)
    text = await asyncio.to_thread(scrape, three_nodes.metrics_ports)
    assert (sample(text, "ray_rayruns_runs_started_total") or 0) >= 4 * SLOTS_PER_WORKER
    assert sample(text, "ray_rayruns_http_responses_total", status="429") == 1
    assert (sample(text, "ray_rayruns_frames_total") or 0) > 0
