"""Helpers shared by the provider tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from rayruns.actors.cancellation import drive
from rayruns.providers.base import Message, Provider, ProviderCall, ProviderEvent
from tests.providers.wire_servers import RecordedConnection

VENDORS = ("openai", "anthropic", "google")
API_KEY = "sk-wire-SECRET-0123456789"
MESSAGES = [
    Message(role="system", content="Be brief."),
    Message(role="user", content="Say hello to the wire."),
]
PROMPT_WORDS = 7  # what the wire server counts as prompt tokens for MESSAGES

ProviderFactory = Callable[..., Provider]


def make_call(
    provider: Provider,
    model: str,
    options: dict[str, Any] | None = None,
    messages: list[Message] | None = None,
) -> ProviderCall:
    return ProviderCall(
        run_id="run-0123456789abcdef",
        model=model,
        messages=messages if messages is not None else MESSAGES,
        options=provider.parse_options(options or {}),
        step=1,
        cancelled=asyncio.Event(),
    )


def stream(provider: Provider, call: ProviderCall) -> AsyncIterator[ProviderEvent]:
    """The provider's stream, driven the way the runtime drives it."""
    return drive(provider.stream(call), call.cancelled)


async def collect(provider: Provider, call: ProviderCall) -> list[ProviderEvent]:
    """Drive the stream to its end the way the runtime does."""
    return [event async for event in stream(provider, call)]


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the loop run until `predicate` holds (no wall-clock wait), failing after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0)


async def wait_threading_event(event: Any, timeout: float) -> bool:
    """Wait for a `threading.Event` set by the wire server's thread, without blocking the loop."""
    return bool(await asyncio.to_thread(event.wait, timeout))


# The stall models never end a response and the providers' read timeout is far beyond the
# hang guard: a connection the client closes was closed by the cancel, however long it took.
NO_TIMEOUT = {"provider_timeout_s": 3600.0}
HANG_GUARD_S = 60.0


async def assert_closed_by_client(conn: RecordedConnection, cancelled_at: float) -> None:
    assert await wait_threading_event(conn.closed, HANG_GUARD_S), "the connection is still open"
    assert conn.closed_by == "client"
    assert conn.closed_at is not None and conn.closed_at >= cancelled_at
