"""One Ray and one Serve instance for the whole session; helpers to drive runs over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from pydantic import SecretStr
from ray import serve

from rayruns.actors.client import RegistryClient
from rayruns.actors.database import Database, PostgresDatabase, SqliteDatabase
from rayruns.actors.keys import KeyStore
from rayruns.actors.placement import local_resources
from rayruns.serve_app.app import deployment
from rayruns.serve_app.settings import Settings
from tests import error_bodies
from tests.postgres_server import PostgresServer, running_postgres
from tests.providers.support import API_KEY
from tests.providers.wire_servers import WireServer, start_wire_server
from tests.sse_client import Event, events_of

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RUN_ACTOR_PREFIX = "rayruns-actor-"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "own_ray: starts Ray clusters of its own; runs before the session's Ray exists, so that "
        "one Ray cluster runs at a time",
    )
    config.addinivalue_line("markers", "last: runs after every other test of the session")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first = [i for i in items if i.get_closest_marker("own_ray")]
    last = [i for i in items if i.get_closest_marker("last")]
    middle = [i for i in items if i not in first and i not in last]
    items[:] = first + middle + last


@pytest.fixture
def no_session_ray() -> None:
    """For tests that start their own Ray: the session's is not up (one cluster at a time)."""
    assert not ray.is_initialized(), "the session's Ray is up: own_ray tests must run first"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def vendor_server() -> Iterator[WireServer]:
    """Speaks OpenAI, Anthropic and Gemini wire formats to the run actors' real SDKs."""
    server = start_wire_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, vendor_server: WireServer) -> Settings:
    s = Settings.from_env()
    for vendor in ("openai", "anthropic", "google"):
        setattr(s.providers, f"{vendor}_api_key", SecretStr(API_KEY))
        setattr(s.providers, f"{vendor}_base_url", vendor_server.base_urls[vendor])  # type: ignore[index]
    s.actors.namespace = "rayruns-test"
    s.actors.db_path = Path(tmp_path_factory.mktemp("db")) / "runs.sqlite3"
    s.actors.cancel_grace_s = 5.0
    s.actors.pool_idle_s = 1.0
    s.actors.tools = "tests.agent_tools"
    s.actors.tool_timeout_s = 3.0
    s.actors.purge_interval_s = 0.5  # terminal records kept in memory are written again soon
    s.serve.port = _free_port()
    s.serve.ping_interval_s = 0.3
    s.serve.max_body_bytes = 64 * 1024
    s.serve.auth_cache_s = 0.0  # a key added or revoked counts at the next request
    return s


@pytest.fixture(scope="session", autouse=True)
def record_error_bodies(settings: Settings) -> None:
    """Every error body the suite gets from the Serve app is kept for tests/test_zz_error_bodies."""
    port = settings.serve.port
    error_bodies.install(lambda request: request.url.port == port)


@pytest.fixture(scope="session")
def ray_session(settings: Settings) -> Iterator[None]:
    # "local": the session's own Ray, never a cluster someone else started on this machine.
    ray.init(
        address="local",
        num_cpus=2,
        resources=local_resources(settings.actors),
        include_dashboard=False,
        namespace=settings.actors.namespace,
        log_to_driver=bool(os.environ.get("RAYRUNS_TEST_RAY_LOGS")),
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def registry(ray_session: None, settings: Settings) -> RegistryClient:
    client = RegistryClient.connect(settings.actors, settings.providers)
    client.wait_ready()
    return client


@pytest.fixture(scope="session")
def base_url(registry: Any, settings: Settings) -> Iterator[str]:
    serve.start(http_options={"host": "127.0.0.1", "port": settings.serve.port})
    serve.run(deployment(settings), name=settings.serve.app_name, route_prefix="/")
    yield f"http://127.0.0.1:{settings.serve.port}"
    serve.shutdown()


@dataclass
class Secured:
    """A second Serve app with its own registry, database and limits, where keys exist.

    Keys would close the main app to every other test, so auth and limit tests run here.
    """

    url: str
    settings: Settings
    registry: RegistryClient
    keys: KeyStore

    def add_key(self, name: str, tenant: str | None = None) -> str:
        return self.keys.add(name, tenant)

    def client(self, key: str | None, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
        headers = dict(headers or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.AsyncClient(base_url=self.url, timeout=60, headers=headers)


SECURED_MAX_LIVE = 20
SECURED_MAX_PER_TENANT = 4


@pytest.fixture(scope="session")
def secured(base_url: str, settings: Settings) -> Iterator[Secured]:
    s = settings.model_copy(deep=True)
    s.actors.namespace = "rayruns-test-secured"  # its run actors apart from the main app's
    s.actors.registry_name = "rayruns-registry-secured"
    s.actors.db_path = settings.actors.resolved_db_path().with_name("secured.sqlite3")
    s.actors.pool_size = 1
    s.actors.max_live_runs = SECURED_MAX_LIVE
    s.actors.max_live_runs_per_tenant = SECURED_MAX_PER_TENANT
    s.serve.app_name = "rayruns-secured"
    keys = KeyStore(s.actors.resolved_db_path())
    keys.add("suite-admin")  # keys exist before the app takes its first request
    registry = RegistryClient.connect(s.actors, s.providers)
    registry.wait_ready()
    serve.run(deployment(s), name=s.serve.app_name, route_prefix="/secured")
    yield Secured(f"{base_url}/secured", s, registry, keys)
    serve.delete(s.serve.app_name)
    for name in [*run_actor_names(s.actors.namespace), s.actors.registry_name]:
        ray.kill(ray.get_actor(name, namespace=s.actors.namespace), no_restart=True)
    keys.close()


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        yield client


def run_actor_names(namespace: str) -> set[str]:
    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and a["name"].startswith(RUN_ACTOR_PREFIX)
    }


def body(text: str = "hello world", **kw: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **kw}


@dataclass
class SSEStream:
    """An open SSE response and its decoded events, read one at a time."""

    response: httpx.Response
    events: AsyncIterator[Event]
    seen: list[Event] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.response.headers["x-run-id"]

    async def next(self) -> Event:
        event = await anext(self.events)
        self.seen.append(event)
        return event

    async def next_frame(self) -> Event:
        """The next event that is not a ping."""
        while True:
            event = await self.next()
            if event.done or event.json.get("message_type") != "ping":
                return event

    async def rest(self) -> list[Event]:
        out = [e async for e in self.events]
        self.seen.extend(out)
        return out


async def open_sse(
    client: httpx.AsyncClient, method: str, url: str, **kw: Any
) -> tuple[SSEStream, Any]:
    cm = client.stream(method, url, **kw)
    response = await cm.__aenter__()
    assert response.status_code == 200, (response.status_code, await response.aread())
    assert response.headers["content-type"].startswith("text/event-stream")
    return SSEStream(response, events_of(response.aiter_bytes())), cm


async def collect(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> list[Event]:
    """Every event of a whole SSE response, through to `[DONE]`."""
    stream, cm = await open_sse(client, method, url, **kw)
    try:
        return await stream.rest()
    finally:
        await cm.__aexit__(None, None, None)


def frames(events: list[Event]) -> list[dict[str, Any]]:
    """The logged frames (those with an SSE id), decoded."""
    return [e.json for e in events if not e.done and e.id_field_seen]


def assert_well_formed(events: list[Event], *, filtered: bool = False) -> None:
    """Ids equal seq_ids and are consecutive (increasing, for a stream filtered by type);
    terminal frames in order; `[DONE]` last."""
    assert events and events[-1].done, "every stream ends with [DONE]"
    assert sum(e.done for e in events) == 1
    logged = [e for e in events if not e.done and e.id_field_seen]
    seq_ids = [e.json["seq_id"] for e in logged]
    if filtered:
        assert seq_ids == sorted(set(seq_ids)), seq_ids
    else:
        assert seq_ids == list(range(seq_ids[0], seq_ids[0] + len(seq_ids))), seq_ids
    for e in logged:
        assert e.last_event_id == str(e.json["seq_id"])
        assert (e.type == "error") == (e.json["message_type"] == "error")
    kinds = [e.json["message_type"] for e in logged]
    assert kinds.count("stop_reason") == 1 and kinds.count("usage_statistics") == 1
    assert kinds[-2:] == ["stop_reason", "usage_statistics"]
    if "error" in kinds:
        assert kinds[-3] == "error" and kinds.count("error") == 1


@contextlib.asynccontextmanager
async def departures_handled(
    http: httpx.AsyncClient, registry: RegistryClient
) -> AsyncIterator[None]:
    """Clients that leave inside the block have been handled by the ingress once it exits.

    A control foreground run is open across the block and its client leaves last; the block
    ends when the control run is cancelled. The ingress handles departures in the order the
    connections close and the registry starts calls in the order they come, so a wrong cancel of
    a run left inside the block has reached the registry by then (it may still be ending: see
    `goes_on`). A leaving client has no event of its own to wait for.
    """
    control, cm = await open_sse(
        http, "POST", "/v1/runs", json=body("control run", provider_options={"hang_after": 1})
    )
    await control.next_frame()
    try:
        yield
    finally:
        await cm.__aexit__(None, None, None)
    assert (await wait_terminal(registry, control.run_id, timeout_s=60)).status == "cancelled"


async def goes_on(http: httpx.AsyncClient, run_id: str, after: int, more: int = 10) -> None:
    """After `departures_handled`: the run still makes progress (a reader joined now gets `more`
    content frames past `after`: at 50 ms a frame, far longer than a cancel already under way
    takes to land), then it ends by the test's own cancel."""
    joined, cm = await open_sse(
        http, "GET", f"/v1/runs/{run_id}/stream", params={"starting_after": after}
    )
    try:
        got = 0
        while got < more:
            frame = await joined.next_frame()
            assert not frame.done, joined.seen
            got += frame.json["message_type"] == "assistant_message"
        await cancel_while_running(http, run_id)
        await joined.rest()
    finally:
        await cm.__aexit__(None, None, None)
    assert frames(joined.seen)[-2]["stop_reason"] == "cancelled"


async def cancel_while_running(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The run is still running; cancel it, and check it ended by this cancel, not earlier."""
    run = (await http.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "running", run
    sent = datetime.now(UTC)
    response = await http.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    ended: dict[str, Any] = response.json()
    assert ended["status"] == "cancelled", ended
    assert datetime.fromisoformat(ended["completed_at"]) >= sent, (ended, sent)
    return ended


async def wait_terminal(registry: RegistryClient, run_id: str, timeout_s: float = 30) -> Any:
    run = await registry.wait_terminal(run_id, timeout_s)
    assert run is not None and run.terminal, run
    return run


async def settled_actor_names(registry: RegistryClient, namespace: str) -> dict[str, list[str]]:
    """The registry's view of run actors, once every other named run actor has exited.

    Ray ends actors asynchronously (a trimmed spare, a killed one): nothing to await but its
    name's disappearance, so this polls with a deadline.
    """
    for _ in range(200):
        names = await registry.actor_names()
        known = set(names["idle"]) | set(names["warming"]) | set(names["busy"])
        if run_actor_names(namespace) <= known:
            return names
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"run actors the registry does not know: {run_actor_names(namespace) - known}"
    )


async def settled_pool(registry: Any, namespace: str, size: int) -> dict[str, list[str]]:
    """The registry's actors once spares are trimmed and none is warming: trimming and refilling
    run on the pool's own clock (pool_idle_s = 1 here), so this polls with a deadline."""
    for _ in range(600):
        names = await settled_actor_names(registry, namespace)
        if not names["warming"] and len(names["idle"]) == size:
            return names
        await asyncio.sleep(0.05)
    return await settled_actor_names(registry, namespace)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the session's own (tests/postgres_server.py)."""
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A fresh, empty database of each kind: tests of the stores run against both."""
    if request.param == "sqlite":
        return SqliteDatabase(tmp_path / "runs.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres")
    return PostgresDatabase(server.new_database())
