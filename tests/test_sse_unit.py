"""The SSE response's ending, without Ray: `on_finish` runs once however the response ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from rayruns.actors.frames import LoggedFrame
from rayruns.serve_app.sse import FrameEncoder, FrameStream

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/runs", "headers": []}


def frame(seq: int, message_type: str = "assistant_message") -> LoggedFrame:
    return LoggedFrame(seq_id=seq, message_type=message_type, data=f'{{"seq_id":{seq}}}')


class Batches:
    """A frame source that records whether it was started and closed."""

    def __init__(self, batches: list[list[LoggedFrame]]) -> None:
        self.started = False
        self.closed = False
        self._batches = batches

    async def __call__(self) -> AsyncGenerator[list[LoggedFrame], None]:
        self.started = True
        try:
            for batch in self._batches:
                yield batch
        finally:
            self.closed = True


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_client_gone_before_the_body_starts_still_ends_the_response() -> None:
    source = Batches([[frame(1)]])
    batches = source()
    await anext(batches)  # already reading: a follow generator the handler started
    finished: list[bool] = []
    response = FrameStream(
        batches, FrameEncoder("run-x", None), {}, ping_interval_s=None, on_finish=finished.append
    )

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            raise OSError("the client went away")  # the body never takes its first step

    with pytest.raises(OSError, match="the client went away"):
        await response(SCOPE, never_disconnects, send)
    assert finished == [False]
    assert source.closed


async def test_a_complete_response_reports_completed_once() -> None:
    source = Batches([[frame(1)], [frame(2, "stop_reason")]])
    finished: list[bool] = []
    sent: list[bytes] = []
    response = FrameStream(
        source(), FrameEncoder("run-x", None), {}, ping_interval_s=None, on_finish=finished.append
    )

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))

    await response(SCOPE, never_disconnects, send)
    body = b"".join(sent)
    assert finished == [True]
    assert body.index(b"id: 1") < body.index(b"id: 2") < body.index(b"data: [DONE]")
    assert source.closed
