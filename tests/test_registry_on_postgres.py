"""The registry itself on PostgreSQL (RAYRUNS_DB_URL), in this process on the session's Ray:
runs, logs, conversations and keys go to the database; a second registry is refused; a new
registry on the same database serves what the first wrote and ends what it left live."""

from __future__ import annotations

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

    def make(self) -> RunRegistry:
        registry = RunRegistry(self.actors, self.providers)
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
