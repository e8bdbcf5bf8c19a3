"""The registry itself on PostgreSQL (RAYRUNS_DB_URL), in this process on the session's Ray:
runs, logs, conversations and keys go to the database; a second registry is refused; a new
registry on the same database serves what the first wrote and ends what it left live."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import ray

from rayruns.actors.database import PostgresDatabase
from rayruns.actors.keys import hash_key
from rayruns.actors.records import Run, utcnow
from rayruns.actors.registry import RunRegistry
from rayruns.actors.spec import RunSpec
from rayruns.actors.store import StoreLocked
from rayruns.serve_app.settings import Settings
from tests.conftest import run_actor_names
from tests.postgres_server import PostgresServer


def spec(text: str = "one two three", **fields: Any) -> RunSpec:
    return RunSpec(messages=[{"role": "user", "content": text}], **fields)


class Registries:
    """Registries on one fresh database, in one namespace of their own."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.actors = settings.actors.model_copy(
            update={
                "namespace": f"rayruns-pg-{uuid.uuid4().hex[:8]}",
                "db_url": url,
                "pool_size": 0,
            }
        )
        self.providers = settings.providers
        self.open: list[RunRegistry] = []

    def make(self, **overrides: Any) -> RunRegistry:
        registry = RunRegistry(self.actors.model_copy(update=overrides), self.providers)
        self.open.append(registry)
        return registry

    async def close(self, registry: RunRegistry) -> None:
        self.open.remove(registry)
        await registry.close()


@pytest.fixture
async def registries(
    ray_session: None, settings: Settings, postgres: PostgresServer
) -> AsyncIterator[Registries]:
    made = Registries(settings, postgres.new_database())
    yield made
    for registry in list(made.open):
        await made.close(registry)
    namespace = made.actors.namespace
    for name in run_actor_names(namespace):
        ray.kill(ray.get_actor(name, namespace=namespace))


def _url(registry: RunRegistry) -> str:
    return str(registry._settings.db_url)


async def test_runs_logs_and_conversations_go_to_postgresql(
    registries: Registries,
) -> None:
    registry = registries.make()
    first, _ = await registry.create_run(spec("hello there", conversation_id="chat"))
    done = await registry.wait_terminal(first.id, timeout_s=60)
    assert done is not None and done.status == "completed"
    second, _ = await registry.create_run(spec("and again", conversation_id="chat"))
    assert (await registry.wait_terminal(second.id, timeout_s=60)).status == "completed"  # type: ignore[union-attr]

    with psycopg.connect(_url(registry)) as db:
        rows = db.execute("SELECT id, status FROM runs ORDER BY created_at").fetchall()
        frames = db.execute(
            "SELECT count(*) FROM log_frames WHERE run_id = %s", (first.id,)
        ).fetchone()
        messages = db.execute("SELECT count(*) FROM messages").fetchone()
    assert rows == [(first.id, "completed"), (second.id, "completed")]
    logged = await registry.stored_frames(first.id)
    assert logged is not None and frames == (len(logged),) and len(logged) > 2
    view = await registry.conversation("chat")
    assert view is not None
    assert [m.role for _, m in view.messages] == ["user", "assistant", "user", "assistant"]
    assert messages == (4,)
    listed = await registry.list_runs(conversation_id="chat", status=None, limit=10)
    assert [r.id for r in listed] == [second.id, first.id]


async def test_a_cancelled_run_and_a_key_on_postgresql(
    registries: Registries,
) -> None:
    registry = registries.make()
    run, _ = await registry.create_run(spec("a b c d", provider_options={"hang_after": 1}))
    cancelled = await registry.cancel(run.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    stored = PostgresDatabase(_url(registry))
    with psycopg.connect(_url(registry)) as db:
        status = db.execute("SELECT status FROM runs WHERE id = %s", (run.id,)).fetchone()
    assert status == ("cancelled",)
    assert not (await registry.authenticate(None)).keys_required
    keys = stored.key_store()  # `rayruns keys add` beside the running registry
    key = keys.add("ops", "team-ops")
    keys.close()
    check = await registry.authenticate(hash_key(key))
    assert check.keys_required and check.tenant == "team-ops"


async def test_one_registry_per_database_and_the_next_one_takes_over(
    registries: Registries,
) -> None:
    first = registries.make()
    run, _ = await first.create_run(spec("kept across registries"))
    assert (await first.wait_terminal(run.id, timeout_s=60)).status == "completed"  # type: ignore[union-attr]
    logged = await first.stored_frames(run.id)
    assert logged
    with pytest.raises(StoreLocked, match="in use by another registry"):
        registries.make()
    # A run left live with no actor, as a registry that died mid-run leaves it.
    orphan = Run(
        id=f"run-{uuid.uuid4().hex}", status="running", model="fake/echo", created_at=utcnow()
    )
    with psycopg.connect(_url(first), autocommit=True) as db:
        db.execute(
            "INSERT INTO runs (id, status, created_at, actor_name, record)"
            " VALUES (%s, 'running', %s, 'rayruns-actor-gone', %s)",
            (orphan.id, orphan.created_at.timestamp(), orphan.model_dump_json()),
        )
    await registries.close(first)

    second = registries.make()
    again = await second.get(run.id)
    assert again is not None and again.status == "completed"
    assert await second.stored_frames(run.id) == logged
    lost = await second.get(orphan.id)
    assert lost is not None and lost.status == "failed" and lost.stop_reason == "error"


def _stored_status(url: str, run_id: str) -> str | None:
    with psycopg.connect(url) as db:
        row = db.execute("SELECT status FROM runs WHERE id = %s", (run_id,)).fetchone()
    return None if row is None else str(row[0])


async def test_the_registry_goes_on_when_its_database_session_ends(
    registries: Registries,
) -> None:
    registry = registries.make()
    url = _url(registry)
    with psycopg.connect(url, autocommit=True) as admin:  # as a database restart would
        (ended,) = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
        ).fetchall()
    assert ended == (True,)
    run, _ = await registry.create_run(spec("after the restart"))
    assert (await registry.wait_terminal(run.id, timeout_s=60)).status == "completed"  # type: ignore[union-attr]
    assert _stored_status(url, run.id) == "completed"
    with pytest.raises(StoreLocked):
        registries.make()  # the new session holds the lock again


async def test_a_terminal_record_the_database_refuses_is_served_and_written_later(
    registries: Registries,
) -> None:
    registry = registries.make(purge_interval_s=0.2)
    url = _url(registry)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'injected fault: disk full'; END $$"
        )
        admin.execute(
            "CREATE TRIGGER refuse_terminal BEFORE UPDATE ON runs FOR EACH ROW"
            " WHEN (NEW.status NOT IN ('created', 'running')) EXECUTE FUNCTION refuse()"
        )
        run, _ = await registry.create_run(spec("x y"))
        done = await registry.wait_terminal(run.id, timeout_s=60)
        assert done is not None and done.status == "completed"
        assert _stored_status(url, run.id) == "running"
        served = await registry.get(run.id)
        assert served is not None and served.status == "completed", "served from memory"
        admin.execute("DROP TRIGGER refuse_terminal ON runs")
    for _ in range(600):
        if _stored_status(url, run.id) == "completed":
            break
        await asyncio.sleep(0.05)  # polled: the registry writes it at its next purge
    assert _stored_status(url, run.id) == "completed"
