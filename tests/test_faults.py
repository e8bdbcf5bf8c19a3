"""Fault injection: processes killed mid-run, a database that fails or blocks its writes,
providers that cut off, stall or trickle, clients that leave at the worst moment.

Each ends with the run terminal exactly once, every reader given `[DONE]`, and no run actor the
registry does not know. Run alone with `pytest -m fault`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray.exceptions import TaskCancelledError

from rayruns.actors.client import RegistryClient
from rayruns.actors.registry import new_run_id
from rayruns.actors.spec import RunSpec
from rayruns.serve_app.auth import Caller
from rayruns.serve_app.run_body import RunBody
from rayruns.serve_app.runs import Runtime, create_run
from rayruns.serve_app.settings import Settings
from tests.conftest import (
    assert_well_formed,
    body,
    collect,
    frames,
    open_sse,
    settled_actor_names,
    settled_pool,
    wait_terminal,
)
from tests.test_runs_on_actors import restart

pytestmark = pytest.mark.fault


@pytest.fixture
def db(settings: Settings) -> Path:
    return settings.actors.resolved_db_path()


@contextlib.contextmanager
def failing_writes(db: Path, table: str, event: str, when: str = "1") -> Iterator[None]:
    """Every matching write to `table` fails as a full disk would, until the block ends."""
    name = f"fault_{uuid.uuid4().hex[:8]}"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(
        f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN {when}"
        " BEGIN SELECT RAISE(ABORT, 'injected fault: database or disk is full'); END"
    )
    try:
        yield
    finally:
        conn.execute(f"DROP TRIGGER {name}")
        conn.close()


@contextlib.contextmanager
def writes_blocked(db: Path) -> Iterator[None]:
    """Another connection holds the write lock: every write of the registry waits."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def stored_status(db: Path, run_id: str) -> str | None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    return None if row is None else str(row[0])


async def no_strays(registry: RegistryClient, settings: Settings, run_id: str) -> None:
    names = await settled_actor_names(registry, settings.actors.namespace)
    assert names["busy"] == [], f"run actors still busy after {run_id}: {names['busy']}"


async def until(check: Any, what: str) -> None:
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)  # polled: the state lives in another process
    raise AssertionError(f"never: {what}")


# -- the database ----------------------------------------------------------------------------


async def test_a_log_that_cannot_be_written_still_ends_the_run(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings, db: Path
) -> None:
    failed_before = (await registry.stats())["failed_writes"]
    with failing_writes(db, "log_frames", "INSERT"):
        events = await collect(http, "POST", "/v1/runs", json=body("a b c"))
        run_id = frames(events)[0]["run_id"]
        run = await wait_terminal(registry, run_id)
    assert_well_formed(events)
    assert run.status == "completed" and stored_status(db, run_id) == "completed"
    assert (await registry.stats())["failed_writes"] > failed_before
    replay = frames(await collect(http, "GET", f"/v1/runs/{run_id}/stream"))
    assert [f["message_type"] for f in replay] == ["stop_reason", "usage_statistics"]
    cancelled = (await http.post(f"/v1/runs/{run_id}/cancel")).json()
    assert cancelled["status"] == "completed"
    await no_strays(registry, settings, run_id)


async def test_a_terminal_record_that_cannot_be_written_is_served_and_written_later(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings, db: Path
) -> None:
    with failing_writes(db, "runs", "UPDATE", "NEW.status NOT IN ('created', 'running')"):
        events = await collect(http, "POST", "/v1/runs", json=body("x y"))
        run_id = frames(events)[0]["run_id"]
        run = await wait_terminal(registry, run_id)
        assert run.status == "completed"
        assert stored_status(db, run_id) == "running"
        got = (await http.get(f"/v1/runs/{run_id}")).json()
        assert got["status"] == "completed", "served from memory while the database fails"
        assert (await registry.stats())["unwritten_records"] >= 1
    assert_well_formed(events)

    async def written() -> bool:
        return stored_status(db, run_id) == "completed"

    await until(written, "the record written once the database takes writes again")
    await no_strays(registry, settings, run_id)


async def test_a_client_leaving_during_create_cancels_the_run(
    registry: RegistryClient, settings: Settings, db: Path
) -> None:
    probe = uuid.uuid4().hex
    request = RunBody.model_validate(
        body("never answered", provider_options={"hang_after": 0}, metadata={"probe": probe})
    )
    rt = Runtime(registry, settings.serve)
    # A settled pool: the acquire below starts the refill of a new actor, still starting when
    # the creation is called off (a cancel that reached it would leave that actor unknown).
    await settled_pool(registry, settings.actors.namespace, settings.actors.pool_size)
    live_before = (await registry.stats())["live_runs"]
    with writes_blocked(db):
        creating = asyncio.create_task(create_run(request, rt, Caller(tenant=None)))

        async def reached_the_registry() -> bool:
            return (await registry.stats())["live_runs"] > live_before

        await until(reached_the_registry, "the create reached the registry")
        creating.cancel()  # what the ingress sees when its client goes away
        with contextlib.suppress(asyncio.CancelledError):
            await creating

    async def recorded() -> bool:
        return any(r.metadata.get("probe") == probe for r in await registry.list_runs(limit=20))

    await until(recorded, "the run recorded")
    (run,) = [r for r in await registry.list_runs(limit=20) if r.metadata.get("probe") == probe]
    ended = await wait_terminal(registry, run.id)
    assert ended.status == "cancelled", "a foreground run whose client left must not run on"
    await no_strays(registry, settings, run.id)
    pool = await settled_pool(registry, settings.actors.namespace, settings.actors.pool_size)
    assert len(pool["idle"]) == settings.actors.pool_size, pool


async def test_a_recursive_cancel_of_a_create_still_starts_the_run_and_keeps_the_pool(
    registry: RegistryClient, settings: Settings, db: Path
) -> None:
    """Serve cancels the request of a client that left recursively: with it, every Ray call
    the registry's create made (the run's start, a new pool actor's first ping) unless the
    creation is detached from the call."""
    probe = uuid.uuid4().hex
    spec = RunSpec.model_validate(
        body("never answered", provider_options={"hang_after": 0}, metadata={"probe": probe})
    )
    await settled_pool(registry, settings.actors.namespace, settings.actors.pool_size)
    live_before = (await registry.stats())["live_runs"]
    run_id = new_run_id()
    with writes_blocked(db):
        pending = registry.handle.create_run.remote(spec, None, run_id)

        async def reached_the_registry() -> bool:
            return (await registry.stats())["live_runs"] > live_before

        await until(reached_the_registry, "the create reached the registry")
        ray.cancel(pending)  # recursive
    with contextlib.suppress(TaskCancelledError):
        await pending

    async def running() -> bool:
        run = await registry.get(run_id)
        return run is not None and run.status == "running"

    await until(running, "the run started although its creating call was cancelled")
    ended = await registry.cancel(run_id)
    assert ended is not None and ended.status == "cancelled", ended
    await no_strays(registry, settings, run_id)
    pool = await settled_pool(registry, settings.actors.namespace, settings.actors.pool_size)
    assert len(pool["idle"]) == settings.actors.pool_size, pool


async def test_a_run_seen_created_over_http_is_cancelled_before_it_starts(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings
) -> None:
    """The pool's idle actors are stopped (SIGSTOP) before one can start the run: the run
    stays `created`, is listed so, and a cancel over HTTP ends it `cancelled` with no content."""
    namespace = settings.actors.namespace
    idle = (await settled_pool(registry, namespace, settings.actors.pool_size))["idle"]
    pids = [
        await ray.get_actor(name, namespace=namespace).__ray_call__.remote(lambda _: os.getpid())
        for name in idle
    ]
    probe = uuid.uuid4().hex
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        posting = asyncio.create_task(
            http.post(
                "/v1/runs",
                json=body("never started", stream=False, metadata={"probe": probe}),
                timeout=60,
            )
        )

        async def listed_created() -> bool:
            runs = (await http.get("/v1/runs", params={"status": "created"})).json()
            return any(r["metadata"].get("probe") == probe for r in runs)

        await until(listed_created, "the run listed as created")
        runs = (await http.get("/v1/runs", params={"status": "created"})).json()
        (run,) = [r for r in runs if r["metadata"].get("probe") == probe]
        assert (await http.get(f"/v1/runs/{run['id']}")).json()["status"] == "created"
        cancelled = await http.post(f"/v1/runs/{run['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled", cancelled.json()
        answer = await posting
        assert answer.status_code == 200, answer.text
        assert answer.json()["run"]["status"] == "cancelled", answer.json()
        assert answer.json()["messages"] == []
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    events = await collect(http, "GET", f"/v1/runs/{run['id']}/stream")
    assert [f["message_type"] for f in frames(events)] == ["stop_reason", "usage_statistics"]
    assert frames(events)[0]["stop_reason"] == "cancelled"
    assert events[-1].done
    await no_strays(registry, settings, run["id"])


# -- killed processes ------------------------------------------------------------------------


async def test_a_run_actor_killed_mid_stream_ends_the_run_lost(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings
) -> None:
    stream, cm = await open_sse(
        http, "POST", "/v1/runs", json=body("a b c d e", provider_options={"hang_after": 2})
    )
    try:
        await stream.next_frame()
        _, actor = await registry.source(stream.run_id)
        os.kill(await actor.ping.remote(), signal.SIGKILL)
        await stream.rest()
    finally:
        await cm.__aexit__(None, None, None)
    assert_well_formed(stream.seen)
    (error,) = [e.json for e in stream.seen if e.type == "error"]
    assert error["error_type"] == "run_lost"
    run = await wait_terminal(registry, stream.run_id)
    assert run.status == "failed" and run.error.error_type == "run_lost"
    await no_strays(registry, settings, stream.run_id)


async def test_a_reader_finishing_from_the_store_outlasts_a_registry_restart(
    registry: RegistryClient, settings: Settings
) -> None:
    run, _ = await registry.create_run(
        RunBody.model_validate(
            body(
                " ".join(f"w{i}" for i in range(20)),
                background=True,
                provider_options={"delay_s": 0.1},
            )
        )
    )
    # No actor given: the reader waits for the end through the registry, then reads the store.
    reader = asyncio.create_task(_read_all(registry, run.id))
    await restart(registry)
    got = await reader
    assert [f.message_type for f in got][-2:] == ["stop_reason", "usage_statistics"]
    assert [f.seq_id for f in got] == list(range(1, len(got) + 1))
    assert (await wait_terminal(registry, run.id)).status == "completed"
    await no_strays(registry, settings, run.id)


async def _read_all(registry: RegistryClient, run_id: str) -> list[Any]:
    return [f async for batch in registry.follow(run_id, 0, None) for f in batch]


async def test_the_registry_killed_mid_create_leaves_no_run_and_no_actor(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings, db: Path
) -> None:
    probe = uuid.uuid4().hex
    live_before = (await registry.stats())["live_runs"]
    with writes_blocked(db):
        posting = asyncio.create_task(
            http.post("/v1/runs", json=body("x", stream=False, metadata={"probe": probe}))
        )

        async def reached_the_registry() -> bool:
            return (await registry.stats())["live_runs"] > live_before

        await until(reached_the_registry, "the create reached the registry")
        await restart(registry)
    response = await posting
    assert response.status_code == 503, response.text
    assert "registry" in response.json()["detail"]
    assert not [r for r in await registry.list_runs(limit=50) if r.metadata.get("probe") == probe]
    await no_strays(registry, settings, probe)


async def test_the_registry_killed_mid_finish_records_the_run_once(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings, db: Path
) -> None:
    stream, cm = await open_sse(
        http, "POST", "/v1/runs", json=body("a b c", provider_options={"delay_s": 0.2})
    )
    try:
        await stream.next_frame()

        async def running() -> bool:
            run = await registry.get(stream.run_id)
            return run is not None and run.status == "running"

        await until(running, "the run recorded running")
        with writes_blocked(db):
            await stream.rest()  # the actor ended the run; the registry waits to record it
            await restart(registry)
    finally:
        await cm.__aexit__(None, None, None)
    assert_well_formed(stream.seen)
    run = await wait_terminal(registry, stream.run_id)
    assert run.status == "completed"
    stored = await registry.stored_frames(stream.run_id)
    assert stored is not None
    assert [f.seq_id for f in stored] == [e.json["seq_id"] for e in stream.seen if e.id_field_seen]
    await no_strays(registry, settings, stream.run_id)


# -- providers -------------------------------------------------------------------------------


async def test_a_provider_that_cuts_off_fails_the_run_with_done(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings
) -> None:
    events = await collect(http, "POST", "/v1/runs", json={**body("hi"), "model": "openai/cut-2"})
    assert_well_formed(events)
    run = await wait_terminal(registry, frames(events)[0]["run_id"])
    assert run.status == "failed" and run.stop_reason == "llm_api_error"
    await no_strays(registry, settings, run.id)


async def test_a_stalled_provider_is_cancelled_when_its_client_leaves(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings
) -> None:
    stream, cm = await open_sse(
        http, "POST", "/v1/runs", json={**body("hi"), "model": "anthropic/stall-2"}
    )
    await stream.next_frame()
    await cm.__aexit__(None, None, None)
    run = await wait_terminal(registry, stream.run_id)
    assert run.status == "cancelled"
    await no_strays(registry, settings, stream.run_id)


async def test_a_trickling_provider_streams_every_byte_and_cancels_at_once(
    http: httpx.AsyncClient, registry: RegistryClient, settings: Settings
) -> None:
    trickle = {"text": "abcdefghij", "chunk": "char", "delay_s": 1.0}
    stream, cm = await open_sse(
        http, "POST", "/v1/runs", json=body("x", background=True, provider_options=trickle)
    )
    try:
        first = [(await stream.next_frame()).json["content"] for _ in range(2)]
        assert first == ["a", "b"]
        cancelled = (await http.post(f"/v1/runs/{stream.run_id}/cancel")).json()
        assert cancelled["status"] == "cancelled"
        await stream.rest()
    finally:
        await cm.__aexit__(None, None, None)
    assert_well_formed(stream.seen)
    await no_strays(registry, settings, stream.run_id)


def test_the_marker_is_registered(pytestconfig: pytest.Config) -> None:
    markers = pytestconfig.getini("markers")
    assert any(str(m).startswith("fault:") for m in markers), json.dumps(markers)
