"""The two-path cancel driver against the fake provider's real generator (no Ray)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from rayruns.actors.cancellation import RunCancelled, drive
from rayruns.providers.base import Message, ProviderCall, ProviderEvent, TextDelta
from rayruns.providers.fake import FakeOptions, FakeProvider, split_chunks
from rayruns.providers.settings import ProviderSettings


def fake_call(text: str = "alpha beta gamma delta", **knobs: Any) -> ProviderCall:
    return ProviderCall(
        run_id="run-test",
        model="echo",
        messages=[Message(role="user", content=text)],
        options=FakeOptions(**knobs),
        step=1,
        cancelled=asyncio.Event(),
    )


def fake_stream(call: ProviderCall) -> AsyncGenerator[ProviderEvent, None]:
    return FakeProvider(ProviderSettings()).stream(call)


async def test_runs_to_completion() -> None:
    call = fake_call()
    events = [e async for e in drive(fake_stream(call), call.cancelled)]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "alpha beta gamma delta"
    assert call.ending.outcome == "completed" and call.ending.upstream_closed
    assert call.usage.prompt_tokens == 4 and call.usage.completion_tokens == 4


async def test_cancel_while_parked_at_yield_is_thrown_in_with_athrow() -> None:
    call = fake_call()
    driven = drive(fake_stream(call), call.cancelled)
    await anext(driven)  # the generator is now parked at its first yield
    call.cancelled.set()
    with pytest.raises(RunCancelled):
        await anext(driven)
    assert call.ending.outcome == "cancelled"
    assert call.ending.cancelled_at == "yield"
    assert call.ending.upstream_closed
    assert call.usage.completion_tokens == 1


async def test_cancel_while_awaiting_the_network_cancels_the_pending_anext() -> None:
    call = fake_call(hang_after=2)
    gen = fake_stream(call)
    driven = drive(gen, call.cancelled)
    received = [await anext(driven), await anext(driven)]
    assert [e.text for e in received if isinstance(e, TextDelta)] == ["alpha ", "beta "]
    pending = asyncio.ensure_future(anext(driven))
    await _until_awaiting_inside(gen)
    call.cancelled.set()
    with pytest.raises(RunCancelled):
        await pending
    assert call.ending.outcome == "cancelled"
    assert call.ending.cancelled_at == "await"
    assert call.ending.upstream_closed
    assert call.usage.completion_tokens == 2


async def _until_awaiting_inside(gen: AsyncGenerator[Any, None]) -> None:
    """Yield to the loop until the generator is suspended at an await inside `__anext__`."""
    for _ in range(100):
        if gen.ag_running:
            return
        await asyncio.sleep(0)  # a bare checkpoint: lets the pending step run, not a timer
    raise AssertionError("the generator never reached an await")


async def test_cancel_before_the_first_event_never_opens_the_stream() -> None:
    call = fake_call()
    call.cancelled.set()
    with pytest.raises(RunCancelled):
        await anext(drive(fake_stream(call), call.cancelled))
    assert call.usage.completion_tokens == 0


async def test_an_outside_cancel_is_not_turned_into_ours() -> None:
    call = fake_call(hang_after=1)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in drive(fake_stream(call), call.cancelled):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.ending.outcome == "closed"
    assert call.ending.upstream_closed
    assert not call.cancelled.is_set()


async def test_a_generator_that_ignores_the_cancel_is_closed() -> None:
    closed = asyncio.Event()

    async def stubborn() -> AsyncGenerator[ProviderEvent, None]:
        try:
            while True:
                try:
                    yield TextDelta(text="x")
                except RunCancelled:
                    continue
        finally:
            closed.set()

    cancelled = asyncio.Event()
    driven = drive(stubborn(), cancelled)
    await anext(driven)
    cancelled.set()
    with pytest.raises(RunCancelled):
        await anext(driven)
    assert closed.is_set()


async def test_provider_errors_propagate_with_their_type() -> None:
    from rayruns.providers.errors import ProviderRateLimited

    call = fake_call(fail="rate_limit", fail_after=2)
    driven = drive(fake_stream(call), call.cancelled)
    got = [await anext(driven), await anext(driven)]
    with pytest.raises(ProviderRateLimited) as info:
        await anext(driven)
    assert len(got) == 2
    assert info.value.detail.status == 429
    assert call.ending.outcome == "failed"


@pytest.mark.parametrize(
    "text",
    ["hello world", "  leading and trailing  ", "tabs\tand\nnewlines\n\n", "", "one"],
)
def test_word_chunks_concatenate_to_the_text(text: str) -> None:
    assert "".join(split_chunks(text, "word")) == text
    assert "".join(split_chunks(text, "char")) == text


async def test_stamped_chunks_carry_their_scheduled_times() -> None:
    # Chunk n is due at start + n × delay_s and says so, however late it is actually produced:
    # a benchmark then counts a starved pump as late frames (bench/README.md).
    call = fake_call("a b c d e", delay_s=0.001, stamp=True)
    events = [e async for e in drive(fake_stream(call), call.cancelled)]
    stamps = [float(e.text) for e in events if isinstance(e, TextDelta)]
    assert len(stamps) == 5
    # Stamps are printed to the microsecond, so a step can round to 999 or 1001 µs.
    steps = [round((b - a) * 1e6) for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(abs(step - 1000) <= 1 for step in steps), steps
