"""A cancel, on either path of `drive`, closes the vendor connection: the server sees it go."""

from __future__ import annotations

import asyncio
import time

import pytest

from rayruns.actors.cancellation import drive
from rayruns.providers.base import RunCancelled, TextDelta
from tests.providers.support import (
    HANG_GUARD_S,
    NO_TIMEOUT,
    PROMPT_WORDS,
    VENDORS,
    ProviderFactory,
    assert_closed_by_client,
    make_call,
    until,
    wait_threading_event,
)
from tests.providers.wire_servers import WireServer

pytestmark = pytest.mark.parametrize("vendor", VENDORS)

# OpenAI reports the prompt's tokens only in the last chunk, which a cancelled stream never gets.
PROMPT_AFTER_CANCEL = {"openai": 0, "anthropic": PROMPT_WORDS, "google": PROMPT_WORDS}


async def test_cancel_at_a_yield_closes_the_connection(
    vendor: str, make: ProviderFactory, wire: WireServer
) -> None:
    provider = make(vendor, **NO_TIMEOUT)
    call = make_call(provider, "stall-5")
    events = drive(provider.stream(call), call.cancelled)
    first = await anext(events)
    assert isinstance(first, TextDelta) and first.text == "w0 "
    request = wire.recorder.last_request("stall-5")
    assert request.outcome is None  # the server is still streaming

    cancelled_at = time.monotonic()
    call.cancelled.set()
    with pytest.raises(RunCancelled):
        await anext(events)

    ending = call.ending
    assert (ending.outcome, ending.cancelled_at, ending.upstream_closed) == (
        "cancelled",
        "yield",
        True,
    )
    await assert_closed_by_client(request.connection, cancelled_at)
    assert await wait_threading_event(request.ended, HANG_GUARD_S)
    assert request.outcome == "client_gone"
    # Usage counts what the stream had handed over when it was cancelled.
    assert call.usage.completion_tokens == 1
    assert call.usage.prompt_tokens == PROMPT_AFTER_CANCEL[vendor]


async def test_cancel_while_awaiting_the_network_closes_the_connection(
    vendor: str, make: ProviderFactory, wire: WireServer
) -> None:
    provider = make(vendor, **NO_TIMEOUT)
    call = make_call(provider, "stall-3")
    stream = provider.stream(call)
    events = drive(stream, call.cancelled)
    received = [await anext(events) for _ in range(3)]
    assert [e.text for e in received if isinstance(e, TextDelta)] == ["w0 ", "w1 ", "w2 "]

    pending = asyncio.ensure_future(anext(events))
    # The provider is inside an await of its __anext__ (the server sends nothing more).
    await until(lambda: stream.ag_running)
    cancelled_at = time.monotonic()
    call.cancelled.set()
    with pytest.raises(RunCancelled):
        await pending

    ending = call.ending
    assert (ending.outcome, ending.cancelled_at, ending.upstream_closed) == (
        "cancelled",
        "await",
        True,
    )
    await assert_closed_by_client(wire.recorder.last_request("stall-3").connection, cancelled_at)
    assert call.usage.completion_tokens == 3
    assert call.usage.prompt_tokens == PROMPT_AFTER_CANCEL[vendor]


async def test_outside_cancel_propagates_and_closes_the_connection(
    vendor: str, make: ProviderFactory, wire: WireServer
) -> None:
    # Not a run cancel (actor shutdown, Ray cancelling the task): CancelledError must get out.
    provider = make(vendor, **NO_TIMEOUT)
    call = make_call(provider, "stall-2")
    stream = provider.stream(call)

    async def consume() -> None:
        async for _ in drive(stream, call.cancelled):
            pass

    task = asyncio.ensure_future(consume())
    # Both chunks handled, and the provider is inside an await for more.
    await until(lambda: call.usage.completion_tokens == 2 and stream.ag_running)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not call.cancelled.is_set()
    assert (call.ending.outcome, call.ending.upstream_closed) == ("closed", True)
    await assert_closed_by_client(wire.recorder.last_request("stall-2").connection, cancelled_at)


async def test_consumer_closing_early_closes_the_connection(
    vendor: str, make: ProviderFactory, wire: WireServer
) -> None:
    provider = make(vendor, **NO_TIMEOUT)
    call = make_call(provider, "stall-4")
    stream = provider.stream(call)
    await anext(stream)
    closed_at = time.monotonic()
    await stream.aclose()
    assert (call.ending.outcome, call.ending.upstream_closed) == ("closed", True)
    await assert_closed_by_client(wire.recorder.last_request("stall-4").connection, closed_at)
