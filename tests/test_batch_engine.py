"""The batch engine: in process against a registry that went silent, and through `Runs.run_batch`
on the session's Ray (results in input order, items that cannot start, cancelling the batch)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest

from rayruns.actors.batch import BatchEngine, BatchItem
from rayruns.actors.client import RegistryClient
from rayruns.actors.handle import RunResult
from rayruns.actors.records import Run, utcnow
from rayruns.actors.runs import Runs
from rayruns.actors.spec import RunSpec


def spec(text: str = "x", **kw: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **kw}


class SilentClient:
    """A registry gone silent: runs start, but no frame ever comes and no cancel returns;
    `cancel_soon` records the fire-and-forget cancels."""

    def __init__(self, started_enough: int) -> None:
        self.started: list[str] = []
        self.cancelling: list[str] = []
        self.sent_cancels: list[str] = []
        self.all_started = asyncio.Event()
        self.all_cancelling = asyncio.Event()
        self._enough = started_enough

    async def create_run_or_cancel(self, spec: RunSpec, _: bool) -> tuple[Run, None]:
        run_id = f"run-{len(self.started)}"
        self.started.append(run_id)
        if len(self.started) == self._enough:
            self.all_started.set()
        return Run(id=run_id, status="running", model=spec.model, created_at=utcnow()), None

    async def follow(self, run_id: str, after_seq: int, actor: None) -> AsyncGenerator[Any, None]:
        await asyncio.Event().wait()
        yield []

    async def cancel(self, run_id: str) -> Run:
        self.cancelling.append(run_id)
        if len(self.cancelling) == len(self.started):
            self.all_cancelling.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def cancel_soon(self, run_id: str) -> None:
        self.sent_cancels.append(run_id)


@pytest.mark.parametrize("how", ["forced", "grace passes"])
async def test_a_stuck_cancel_is_abandoned_but_still_sent(how: str) -> None:
    client = SilentClient(started_enough=3)
    reported: list[RunResult] = []
    engine = BatchEngine(
        cast(RegistryClient, client), 3, on_result=lambda _, result: reported.append(result)
    )
    body = RunSpec.model_validate(spec())
    items = iter([BatchItem(n, n, body) for n in range(1, 6)])
    force = asyncio.Event()
    grace_s = 60 if how == "forced" else 0.2
    work = asyncio.create_task(engine.run(items, grace_s=grace_s, force=force))
    await asyncio.wait_for(client.all_started.wait(), 5)
    engine.stopping.set()
    await asyncio.wait_for(client.all_cancelling.wait(), 5)
    if how == "forced":
        force.set()
    await asyncio.wait_for(work, 5)
    assert client.started == ["run-0", "run-1", "run-2"]  # nothing new once stopping
    assert sorted(client.sent_cancels) == client.started
    assert reported == []
    assert engine.running == 0


async def test_run_batch_results_come_in_input_order(registry: RegistryClient) -> None:
    runs = Runs(registry)
    holder = await runs.start(spec(provider_options={"hang_after": 0}, conversation_id="held"))
    specs = [
        spec("slow words", provider_options={"hang_after": 1}, conversation_id="order-slow"),
        spec("busy", conversation_id="held"),
        spec("fast one", stream=False),  # HTTP-only fields are ignored
        spec("bad", model="acme/x"),
        spec("bad options", provider_options={"delay_s": "soon"}),
    ]
    started: list[Any] = []
    ended: list[Any] = []

    async def on_result(result: RunResult) -> None:
        ended.append(result.id)
        if result.id == "c":  # the fast run is done: end the slow one, which came first
            (slow,) = await registry.list_runs(conversation_id="order-slow")
            await registry.cancel(slow.id)

    try:
        results = await runs.run_batch(
            specs,
            concurrency=5,
            ids=["a", "b", "c", "d", "e"],
            on_start=started.append,
            on_result=on_result,
        )
    finally:
        await holder.cancel()
    assert [r.id for r in results] == ["a", "b", "c", "d", "e"]
    assert ended[-1] == "a" and sorted(ended) == ["a", "b", "c", "d", "e"], results
    assert sorted(started) == ["a", "b", "c"]  # the invalid ones never start
    slow, busy, fast, bad, bad_options = results
    assert slow.status == "cancelled" and slow.text == "slow "
    assert fast.status == "completed" and fast.text == "fast one" and fast.run_id
    for failed, needle in (
        (busy, "has an active run"),
        (bad, "unknown provider 'acme'"),
        (bad_options, "delay_s"),
    ):
        assert failed.status == "failed" and failed.run_id is None
        assert failed.error is not None and failed.error.error_type == "invalid_request"
        assert needle in failed.error.message


async def test_cancelling_run_batch_cancels_its_runs(registry: RegistryClient) -> None:
    runs = Runs(registry)
    convs = [f"batch-cancel-{n}" for n in range(3)]
    specs = [spec(provider_options={"hang_after": 0}, conversation_id=c) for c in convs]
    started: list[Any] = []
    two_started = asyncio.Event()

    def on_start(id: Any) -> None:
        started.append(id)
        if len(started) == 2:
            two_started.set()

    batch = asyncio.create_task(runs.run_batch(specs, concurrency=2, on_start=on_start))
    await asyncio.wait_for(two_started.wait(), 30)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    for conv in convs[:2]:
        (run,) = await registry.list_runs(conversation_id=conv)
        assert run.status == "cancelled", run
    assert await registry.list_runs(conversation_id=convs[2]) == []
