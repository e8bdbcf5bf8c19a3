"""After every provider test (each closes its provider), the wire server holds no connection."""

from __future__ import annotations

import asyncio

import pytest

from tests.providers.wire_servers import WireServer


@pytest.mark.after_all_provider_tests
async def test_no_connection_is_left_open(wire: WireServer) -> None:
    recorder = wire.recorder
    closed = await asyncio.to_thread(recorder.wait_all_closed, 2.0)
    still_open = [
        (conn.id, [r.model for r in conn.requests]) for conn in recorder.open_connections()
    ]
    assert closed, f"connections still open (id, models): {still_open}"
    unfinished = [r.model for r in recorder.requests if r.outcome is None]
    assert not unfinished, f"responses the server is still sending: {unfinished}"
