"""The registry and its pool in this process (own namespace, own database): the transitions
whose races cannot be arranged from outside a live cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from rayruns.actors.frames import LoggedFrame
from rayruns.actors.pool import ActorPool, RunActorRef
from rayruns.actors.records import Outcome, Run, Usage, terminal_frames, utcnow
from rayruns.actors.registry import RunRegistry, _Live
from rayruns.actors.run_actor import FinishedRun
from rayruns.actors.spec import RunSpec
from rayruns.serve_app.settings import Settings
from tests.conftest import run_actor_names


def spec(text: str = "one two three", **options: Any) -> RunSpec:
    return RunSpec(messages=[{"role": "user", "content": text}], provider_options=options)


@pytest.fixture
async def make_registry(
    ray_session: None, settings: Settings, tmp_path: Path
) -> AsyncIterator[Callable[..., RunRegistry]]:
    made: list[RunRegistry] = []

    def make(**overrides: Any) -> RunRegistry:
        actors = settings.actors.model_copy(
            update={
                "namespace": f"rayruns-unit-{uuid.uuid4().hex[:8]}",
                "db_path": tmp_path / f"runs-{len(made)}.sqlite3",
                "pool_size": 0,
                **overrides,
            }
        )
        registry = RunRegistry(actors, settings.providers)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        namespace = registry._settings.namespace
        await registry.close()
        for name in run_actor_names(namespace):
            ray.kill(ray.get_actor(name, namespace=namespace))


async def read_until(actor: Any, run_id: str, count: int) -> list[LoggedFrame]:
    got: list[LoggedFrame] = []
    while len(got) < count:
        batch, _ = await actor.read.remote(run_id, len(got))
        got += batch
    return got


async def dead(handle: Any) -> bool:
    try:
        await handle.ping.remote()
    except RayActorError:
        return True
    return False


async def ended(name: str, namespace: str) -> bool:
    """Whether the named actor is gone within a while (`ray.kill` returns before it is)."""
    for _ in range(200):
        if name not in run_actor_names(namespace):
            return True
        await asyncio.sleep(0.05)  # nothing to await but the name's disappearance
    return False


def remote(fn: Callable[..., Coroutine[Any, Any, Any]]) -> SimpleNamespace:
    return SimpleNamespace(remote=fn)


async def test_an_unreachable_actor_is_waited_for_not_taken_for_dead(
    make_registry: Callable[..., RunRegistry],
) -> None:
    registry = make_registry()
    run = Run(id="run-unreachable", status="created", model="fake/echo", created_at=utcnow())
    outcome = Outcome(stop_reason="end_turn", usage=Usage(completion_tokens=1, step_count=1))
    frames = terminal_frames(run.id, 0, outcome)
    unreachable = 2

    async def result(run_id: str) -> FinishedRun:
        nonlocal unreachable
        if unreachable:
            unreachable -= 1
            raise ActorUnavailableError("the actor's node is unreachable", None)
        return FinishedRun(run_id=run_id, outcome=outcome, frames=frames, stream_endings=[])

    handle = SimpleNamespace(result=remote(result), __ray_terminate__=SimpleNamespace(remote=dict))
    live = registry._live[run.id] = _Live(run, RunActorRef(handle, "flaky"))
    registry._store.insert(run, "flaky")
    await registry._watch(live)
    recorded = await registry.get(run.id)
    assert recorded is not None and recorded.status == "completed", recorded
    assert await registry.stored_frames(run.id) == frames


async def test_an_actor_that_cannot_be_reset_is_not_left_running(
    make_registry: Callable[..., RunRegistry],
) -> None:
    registry = make_registry()
    pool = ActorPool(
        registry._settings.model_copy(update={"pool_size": 1}), registry._provider_settings
    )
    actor = pool.spawn()
    try:
        await actor.handle.start.remote("run-stuck", spec(hang_after=0))
        await pool.release(actor)  # its run never ended: reset refuses
        namespace = registry._settings.namespace
        assert await ended(actor.name, namespace), "a detached actor that failed reset leaked"
    finally:
        pool.close()
        ray.kill(actor.handle)


async def test_a_cancel_during_the_replacement_of_a_dead_pooled_actor_reaches_the_new_one(
    make_registry: Callable[..., RunRegistry],
) -> None:
    registry = make_registry(pool_size=1, cancel_grace_s=120)
    assert registry._pool._refill_task is not None
    await registry._pool._refill_task
    (stale,) = registry._pool._idle
    ray.kill(stale.actor.handle)
    assert await dead(stale.actor.handle)
    creating = asyncio.create_task(registry.create_run(spec(hang_after=0)))
    await asyncio.sleep(0)  # create_run runs to its first await: the run is live
    (run_id,) = registry._live
    cancelling = asyncio.create_task(registry.cancel(run_id))
    run, _ = await creating
    assert run.id == run_id
    async with asyncio.timeout(60):  # a hang guard: before the fix, only the 120 s grace ends it
        cancelled = await cancelling
    assert cancelled is not None and cancelled.status == "cancelled"
    frames = await registry.stored_frames(run_id)
    assert frames is not None and frames[-2].message_type == "stop_reason"


async def test_a_run_that_ignores_its_cancel_keeps_its_log_and_usage(
    make_registry: Callable[..., RunRegistry],
) -> None:
    registry = make_registry(cancel_grace_s=0.5)
    run, name = await registry.create_run(spec("a b c d", hang_after=2, ignore_cancel=True))
    actor = ray.get_actor(name, namespace=registry._settings.namespace)
    before = await read_until(actor, run.id, 2)
    cancelled = await registry.cancel(run.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert cancelled.usage is not None and cancelled.usage.completion_tokens == 2
    kept = await registry.stored_frames(run.id)
    assert kept is not None, "the log was kept"
    assert kept[:2] == before
    assert [f.message_type for f in kept[2:]] == ["stop_reason", "usage_statistics"]
    assert [f.seq_id for f in kept] == [1, 2, 3, 4]
