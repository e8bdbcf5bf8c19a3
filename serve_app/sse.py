"""Frames → SSE, in this one place. Pings are sent after `ping_interval_s` without a frame.

Two dialects share the machinery: rayruns frames (`id:` = seq_id, ping frames) and OpenAI
Chat Completions chunks (no ids, comment keep-alives), chosen by the encoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Collection, Iterable
from typing import Any, Protocol

from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse
from starlette.types import Message, Receive, Scope, Send

from rayruns.actors.frames import CONTENT_TYPES, LoggedFrame

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE_EVENT = ServerSentEvent(data="[DONE]").encode()
KEEPALIVE = ServerSentEvent(comment="keep-alive").encode()


class Encoder(Protocol):
    def batch(self, frames: list[LoggedFrame]) -> bytes: ...

    def ping(self) -> bytes: ...


def wanted(frame: LoggedFrame, types: Collection[str] | None) -> bool:
    """`include_return_message_types` filters content frames; terminal frames always pass."""
    return types is None or frame.message_type not in CONTENT_TYPES or frame.message_type in types


def encode_json(data: Any) -> bytes:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":"))).encode()


class FrameEncoder:
    """rayruns frames: each with `id: <seq_id>`; errors as `event: error`; ping frames."""

    def __init__(self, run_id: str, types: Collection[str] | None) -> None:
        self._run_id = run_id
        self._types = types
        # A ping carries the last seq_id *sent*: filtered frames never reached the client.
        self._last_sent: int | None = None

    def batch(self, frames: list[LoggedFrame]) -> bytes:
        sent = [f for f in frames if wanted(f, self._types)]
        if sent:
            self._last_sent = sent[-1].seq_id
        return b"".join(
            ServerSentEvent(
                data=f.data,
                id=str(f.seq_id),
                event="error" if f.message_type == "error" else None,
            ).encode()
            for f in sent
        )

    def ping(self) -> bytes:
        return encode_json(
            {"message_type": "ping", "run_id": self._run_id, "seq_id": self._last_sent}
        )


class JsonEventEncoder:
    """One `data:` event per JSON object a translator makes of each frame; comment keep-alives."""

    def __init__(self, translate: Callable[[LoggedFrame], Iterable[Any]]) -> None:
        self._translate = translate

    def batch(self, frames: list[LoggedFrame]) -> bytes:
        return b"".join(encode_json(obj) for f in frames for obj in self._translate(f))

    def ping(self) -> bytes:
        return KEEPALIVE


class FrameStream(EventSourceResponse):
    """One SSE response of batches of frames: each batch one chunk, pings while idle, `[DONE]`.

    `first` is a batch already read from `batches` (sent before the rest).
    `on_finish(completed)` runs exactly once however the response ends, `completed` False
    when the client went away (or anything else stopped it) before `[DONE]` was sent. It is
    called here, not in the body generator: a client that leaves between the headers and the
    body's first step would otherwise close a generator that never started, whose `finally`
    never runs, and a foreground run would outlive its client.
    """

    def __init__(
        self,
        batches: AsyncGenerator[list[LoggedFrame], None],
        encoder: Encoder,
        headers: dict[str, str],
        *,
        ping_interval_s: float | None,
        on_finish: Callable[[bool], None] | None = None,
        first: list[LoggedFrame] | None = None,
    ) -> None:
        self._first = first
        self._batches = batches
        self._encoder = encoder
        self._ping_interval_s = ping_interval_s
        self._on_finish = on_finish
        self._completed = False
        self._body = self._encode()
        super().__init__(self._body, headers={**SSE_HEADERS, **headers}, ping=0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id = self.headers.get("x-run-id")

        async def receive_logged() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                log.info("run %s: the client disconnected", run_id)
            return message

        try:
            await super().__call__(scope, receive_logged, send)
        except asyncio.CancelledError:
            log.info("run %s: the request was cancelled", run_id)
            raise
        finally:
            # First, before any await here can be interrupted by a second cancel.
            if self._on_finish is not None:
                self._on_finish(self._completed)
            await self._body.aclose()
            with contextlib.suppress(Exception):
                await self._batches.aclose()

    async def _encode(self) -> AsyncGenerator[bytes, None]:
        pending: asyncio.Future[list[LoggedFrame]] | None = None
        try:
            # The encoder keeps the cursor a ping carries: the last frame it sent.
            if self._first and (chunk := self._encoder.batch(self._first)):
                yield chunk
            while True:
                pending = asyncio.ensure_future(anext(self._batches))
                while not (await asyncio.wait((pending,), timeout=self._ping_interval_s))[0]:
                    yield self._encoder.ping()
                try:
                    batch = pending.result()
                except StopAsyncIteration:
                    break
                chunk = self._encoder.batch(batch)
                if chunk:
                    yield chunk
            self._completed = True
            yield DONE_EVENT
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.wait((pending,))
