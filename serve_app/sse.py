"""Frames → SSE, in this one place. Pings are sent after `ping_interval_s` without a frame."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection

from sse_starlette.event import ServerSentEvent

from actors.frames import CONTENT_TYPES, LoggedFrame

DONE = ServerSentEvent(data="[DONE]").encode()


def encode_frame(frame: LoggedFrame) -> bytes:
    event = "error" if frame.message_type == "error" else None
    return ServerSentEvent(data=frame.data, id=str(frame.seq_id), event=event).encode()


def encode_ping(run_id: str, last_seq: int | None) -> bytes:
    data = json.dumps({"message_type": "ping", "run_id": run_id, "seq_id": last_seq})
    return ServerSentEvent(data=data).encode()


def wanted(frame: LoggedFrame, types: Collection[str] | None) -> bool:
    """`include_return_message_types` filters content frames; terminal frames always pass."""
    return types is None or frame.message_type not in CONTENT_TYPES or frame.message_type in types


async def sse_body(
    batches: AsyncGenerator[list[LoggedFrame], None],
    *,
    run_id: str,
    ping_interval_s: float | None,
    types: Collection[str] | None,
    on_finish: Callable[[bool], None] | None = None,
) -> AsyncIterator[bytes]:
    """Encode each batch as one chunk, ping while idle, end with `[DONE]`.

    `on_finish(completed)` runs however the body ends: `completed` is False when the client
    went away (or anything else stopped the body) before `[DONE]` was sent.
    """
    last_seq: int | None = None
    pending: asyncio.Future[list[LoggedFrame]] | None = None
    completed = False
    try:
        while True:
            pending = asyncio.ensure_future(anext(batches))
            while not (await asyncio.wait((pending,), timeout=ping_interval_s))[0]:
                yield encode_ping(run_id, last_seq)
            try:
                batch = pending.result()
            except StopAsyncIteration:
                break
            last_seq = batch[-1].seq_id
            chunk = b"".join(encode_frame(f) for f in batch if wanted(f, types))
            if chunk:
                yield chunk
        completed = True
        yield DONE
    finally:
        # First, before any await here can be interrupted by a second cancel.
        if on_finish is not None:
            on_finish(completed)
        if pending is not None and not pending.done():
            pending.cancel()
            await asyncio.wait((pending,))
        with contextlib.suppress(Exception):
            await batches.aclose()
