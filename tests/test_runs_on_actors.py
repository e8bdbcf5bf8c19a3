"""Runs driven through the registry and run actors directly (no HTTP)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ray

from rayruns.actors.client import RegistryClient
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.registry import ConversationBusy
from rayruns.actors.remote import ActorHandle
from rayruns.actors.spec import RunSpec
from tests.conftest import run_actor_names, settled_actor_names, settled_pool, wait_terminal


def request(text: str = "alpha beta gamma", **options: Any) -> RunSpec:
    return RunSpec(messages=[{"role": "user", "content": text}], provider_options=options)


async def read_all(
    registry: RegistryClient, run_id: str, actor: ActorHandle | None, after: int = 0
) -> list[LoggedFrame]:
    return [f async for batch in registry.follow(run_id, after, actor) for f in batch]


def kinds(frames: list[LoggedFrame]) -> list[str]:
    return [f.message_type for f in frames]


def stop_reason_of(frames: list[LoggedFrame]) -> str:
    import json

    (stop,) = [json.loads(f.data) for f in frames if f.message_type == "stop_reason"]
    return str(stop["stop_reason"])


async def restart(registry: RegistryClient) -> None:
    """Kill the registry and wait until Ray has restarted it (its constructor reloads SQLite)."""
    first = (await registry.stats())["incarnation"]
    ray.kill(registry.handle, no_restart=False)
    for _ in range(600):
        try:
            if (await registry.stats())["incarnation"] != first:
                return
        except ray.exceptions.RayActorError:
            pass
        await asyncio.sleep(0.05)  # a restart has no event to wait on from outside
    raise AssertionError("the registry was not restarted")


async def endings(registry: RegistryClient, run_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await registry.stream_endings(run_id)
    return found


async def test_a_run_completes_and_its_log_is_numbered_from_one(registry: RegistryClient) -> None:
    run, actor = await registry.create_run(request())
    frames = await read_all(registry, run.id, actor)
    assert [f.seq_id for f in frames] == list(range(1, len(frames) + 1))
    assert kinds(frames) == ["assistant_message"] * 3 + ["stop_reason", "usage_statistics"]
    done = await wait_terminal(registry, run.id)
    assert done.status == "completed" and done.stop_reason == "end_turn"
    assert done.usage.completion_tokens == 3 and done.usage.prompt_tokens == 3


async def test_cancel_while_the_provider_awaits_the_network(registry: RegistryClient) -> None:
    run, actor = await registry.create_run(request(hang_after=2))
    reader = registry.follow(run.id, 0, actor)
    got: list[LoggedFrame] = []
    while len(got) < 2:
        got += await anext(reader)
    cancelled = await registry.cancel(run.id)
    got += [f async for batch in reader for f in batch]
    assert cancelled.status == "cancelled" and cancelled.stop_reason == "cancelled"
    assert stop_reason_of(got) == "cancelled"
    assert cancelled.usage.completion_tokens == 2
    (ending,) = await endings(registry, run.id)
    assert ending == {
        "outcome": "cancelled",
        "cancelled_at": "await",
        "upstream_closed": True,
        "error": None,
    }


async def test_cancel_mid_stream_is_seen_by_the_generator(registry: RegistryClient) -> None:
    run, actor = await registry.create_run(request(" ".join(["w"] * 500), delay_s=0.01))
    reader = registry.follow(run.id, 0, actor)
    await anext(reader)
    cancelled = await registry.cancel(run.id)
    rest = [f async for batch in reader for f in batch]
    assert cancelled.status == "cancelled" and stop_reason_of(rest) == "cancelled"
    (ending,) = await endings(registry, run.id)
    assert ending["outcome"] == "cancelled" and ending["upstream_closed"]
    assert ending["cancelled_at"] in ("yield", "await")


async def test_cancel_before_start_wins(registry: RegistryClient, settings: Any) -> None:
    from rayruns.actors.remote import new_run_actor

    actor = new_run_actor("rayruns-actor-test-before-start", settings.actors, settings.providers)
    try:
        await actor.cancel.remote("run-direct-before-start")
        await actor.start.remote("run-direct-before-start", request())
        result = await actor.result.remote("run-direct-before-start")
        assert result.outcome.stop_reason == "cancelled"
        assert result.stream_endings == []  # the provider was never called
        assert kinds(result.frames) == ["stop_reason", "usage_statistics"]
    finally:
        ray.kill(actor)


async def test_cancel_after_the_end_leaves_it_completed(registry: RegistryClient) -> None:
    run, actor = await registry.create_run(request())
    await read_all(registry, run.id, actor)
    done = await wait_terminal(registry, run.id)
    again = await registry.cancel(run.id)
    assert done.status == again.status == "completed"
    assert again.completed_at == done.completed_at


async def test_two_cancels_at_once(registry: RegistryClient) -> None:
    run, actor = await registry.create_run(request(hang_after=1))
    reader = registry.follow(run.id, 0, actor)
    await anext(reader)
    a, b = await asyncio.gather(registry.cancel(run.id), registry.cancel(run.id))
    assert a.status == b.status == "cancelled"
    rest = [f async for batch in reader for f in batch]
    assert kinds(rest).count("stop_reason") == 1


async def test_cancel_racing_completion_always_ends_once(registry: RegistryClient) -> None:
    seen = set()
    for i in range(25):
        run, actor = await registry.create_run(request(" ".join(["x"] * (i % 5 + 1))))
        reader = read_all(registry, run.id, actor)
        frames, cancelled = await asyncio.gather(reader, registry.cancel(run.id))
        record = await wait_terminal(registry, run.id)
        assert record.stop_reason == stop_reason_of(frames) == cancelled.stop_reason
        assert kinds(frames).count("stop_reason") == 1
        seen.add(record.status)
    assert seen <= {"completed", "cancelled"}


async def test_an_actor_killed_mid_run_is_run_lost(registry: RegistryClient) -> None:
    run, actor = await registry.create_run(request(hang_after=2))
    reader = registry.follow(run.id, 0, actor)
    got: list[LoggedFrame] = []
    while len(got) < 2:
        got += await anext(reader)
    ray.kill(actor, no_restart=True)
    got += [f async for batch in reader for f in batch]
    assert kinds(got)[-3:] == ["error", "stop_reason", "usage_statistics"]
    assert [f.seq_id for f in got] == list(range(1, len(got) + 1))
    lost = await wait_terminal(registry, run.id)
    assert lost.status == "failed" and lost.error.error_type == "run_lost"
    # A reader arriving later gets the same ending.
    late = await read_all(registry, run.id, None)
    assert kinds(late) == ["error", "stop_reason", "usage_statistics"]


async def test_records_survive_a_registry_restart(registry: RegistryClient) -> None:
    run, actor = await registry.create_run(request())
    await read_all(registry, run.id, actor)
    done = await wait_terminal(registry, run.id)
    await restart(registry)
    assert (await registry.get(run.id)) == done
    frames = await read_all(registry, run.id, None)
    assert kinds(frames)[-2:] == ["stop_reason", "usage_statistics"]


async def test_no_run_actor_outlives_its_run(registry: RegistryClient, settings: Any) -> None:
    runs = [await registry.create_run(request()) for _ in range(6)]
    for run, actor in runs:
        await read_all(registry, run.id, actor)
        await wait_terminal(registry, run.id)
    names = await settled_actor_names(registry, settings.actors.namespace)
    assert names["busy"] == []
    for name in names["idle"]:  # idle actors were reset: they hold no run
        idle = ray.get_actor(name, namespace=settings.actors.namespace)
        assert await idle.current_run.remote() is None


async def test_spare_actors_after_a_burst_are_ended(
    registry: RegistryClient, settings: Any
) -> None:
    burst = [await registry.create_run(request(hang_after=0)) for _ in range(8)]
    for run, _ in burst:
        await registry.cancel(run.id)
    for _ in range(400):
        if (await registry.stats())["idle"] == settings.actors.pool_size:
            break
        await asyncio.sleep(0.05)  # trimming runs on its own clock (pool_idle_s = 1 here)
    assert (await registry.stats())["idle"] == settings.actors.pool_size


async def test_pooled_actors_are_reused_and_reset(registry: RegistryClient) -> None:
    pids = []
    for i in range(4):
        run, actor = await registry.create_run(request(f"run{i} alone", hang_after=1))
        pids.append(await actor.ping.remote())
        await registry.cancel(run.id)
        frames = await read_all(registry, run.id, None)
        assert [f.seq_id for f in frames] == [1, 2, 3]
        assert f"run{i} " in frames[0].data and run.id in frames[0].data
    assert len(set(pids)) < len(pids), "a warm actor serves more than one run"


async def test_the_pool_never_gives_one_actor_two_runs(registry: RegistryClient) -> None:
    started = [await registry.create_run(request(hang_after=0)) for _ in range(6)]
    pids = [await actor.ping.remote() for _, actor in started]
    assert len(set(pids)) == len(pids)
    for run, _ in started:
        assert (await registry.cancel(run.id)).status == "cancelled"


async def test_a_dead_pooled_actor_is_replaced(registry: RegistryClient, settings: Any) -> None:
    namespace, size = settings.actors.namespace, settings.actors.pool_size
    settled = await settled_pool(registry, namespace, size)
    assert len(settled["idle"]) == size and not settled["warming"], settled
    # The pool hands out its most recently idle actor: kill exactly that one, so the next run
    # meets it (and no dead handle is left for later tests).
    doomed = settled["idle"][-1]
    before = (await registry.stats())["replaced"]
    ray.kill(ray.get_actor(doomed, namespace=namespace))
    run, actor = await registry.create_run(request("still works"))
    frames = await read_all(registry, run.id, actor)
    assert stop_reason_of(frames) == "end_turn"
    assert (await registry.stats())["replaced"] == before + 1
    after = await settled_pool(registry, namespace, size)
    assert doomed not in after["idle"] and len(after["idle"]) == size, after
    assert set(after["idle"]) <= run_actor_names(namespace), "a dead handle stayed in the pool"


@pytest.mark.parametrize(
    ("knobs", "error_type"),
    [
        ({"fail": "timeout"}, "llm_timeout"),
        ({"fail": "rate_limit"}, "llm_rate_limit"),
        ({"fail": "auth"}, "llm_authentication"),
        ({"fail": "bad_request"}, "llm_bad_request"),
        ({"fail": "error", "fail_after": 2}, "llm_error"),
    ],
)
async def test_provider_failures(
    registry: RegistryClient, knobs: dict[str, Any], error_type: str
) -> None:
    run, actor = await registry.create_run(request(**knobs))
    frames = await read_all(registry, run.id, actor)
    record = await wait_terminal(registry, run.id)
    assert record.status == "failed" and record.stop_reason == "llm_api_error"
    assert record.error.error_type == error_type
    assert kinds(frames)[-3:] == ["error", "stop_reason", "usage_statistics"]
    assert kinds(frames).count("assistant_message") == knobs.get("fail_after", 0)


async def test_a_registry_restart_mid_run_reattaches(registry: RegistryClient) -> None:
    run, actor = await registry.create_run(request(hang_after=1))
    reader = registry.follow(run.id, 0, actor)
    first = await anext(reader)
    await restart(registry)
    assert (await registry.get(run.id)).status == "running"
    cancelled = await registry.cancel(run.id)
    assert cancelled.status == "cancelled"
    rest = [f async for batch in reader for f in batch]
    assert [f.seq_id for f in first + rest] == list(range(1, len(first + rest) + 1))
    assert stop_reason_of(rest) == "cancelled"


async def test_the_registrys_own_errors_arrive_unwrapped(registry: RegistryClient) -> None:
    busy = request(hang_after=0).model_copy(update={"conversation_id": "conv-unwrapped"})
    run, _ = await registry.create_run(busy)
    try:
        with pytest.raises(ConversationBusy) as caught:
            await registry.create_run(busy)
        assert type(caught.value) is ConversationBusy  # not Ray's RayTaskError subclass of it
        assert caught.value.run_id == run.id
    finally:
        await registry.cancel(run.id)
