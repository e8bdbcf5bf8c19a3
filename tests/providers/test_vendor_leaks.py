"""After every other test: no response of the wire server is still being sent (to a provider
in this process or in a run actor), and no socket of this process is still connected to it.

Run actors keep their SDK clients across runs, so an idle pooled actor may hold a keep-alive
connection; a response still streaming to one is a run that was never closed upstream.
"""

from __future__ import annotations

import asyncio

import psutil
import pytest

from tests.providers.support import ProviderFactory, make_call, stream
from tests.providers.wire_servers import WireServer

HANG_GUARD_S = 60.0


def own_connections_to(port: int) -> list[str]:
    return [
        f"{c.laddr.port} -> {c.raddr.port} {c.status}"
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


@pytest.mark.last
async def test_no_response_is_still_streaming_and_no_connection_of_ours_is_open(
    wire: WireServer, make: ProviderFactory
) -> None:
    # A stream of its own, cut short by the consumer, so the check never looks at nothing.
    provider = make("openai")
    call = make_call(provider, "stall-2")
    events = stream(provider, call)
    await anext(events)
    await events.aclose()  # type: ignore[attr-defined]
    # Checked before the provider is closed: a pooled run actor keeps its provider open too.
    recorder = wire.recorder
    answered = await asyncio.to_thread(recorder.wait_all_answered, HANG_GUARD_S)
    unfinished = [(r.model, r.chunks_sent) for r in recorder.requests if r.outcome is None]
    assert answered, f"responses the server is still sending (model, chunks sent): {unfinished}"
    await provider.aclose()
    assert own_connections_to(wire.port) == [], "this process left connections open"
