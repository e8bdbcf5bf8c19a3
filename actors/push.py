"""The actor side of the frame data plane: subscriptions attached to readers' sinks.

Each subscription is one connection to one sink. The log calls `changed()` whenever it grows or
closes; the pusher then flushes once at the end of the event loop's turn, so everything logged in
one turn leaves as one message per subscription. Writes never wait: a subscription whose unsent
bytes pass its sink's bound (a stalled reader) is dropped, and its reader catches up with `read`.
The pump never waits for a reader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import ray

from rayruns.actors.frame_log import FrameLog
from rayruns.actors.wire import ACK, SinkAddress, SinkRefused, batch_message, hello

log = logging.getLogger(__name__)

# A sink that accepts a connection answers the hello at once; this only bounds a broken one.
HANDSHAKE_TIMEOUT_S = 10.0


class _Connection(asyncio.Protocol):
    """One subscription's connection. Sinks send nothing after the ACK."""

    def __init__(self) -> None:
        self.acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.on_lost: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (Ray's actor loops) are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if data[:1] == ACK and not self.acked.done():
            self.acked.set_result(None)
        elif self.transport is not None:
            self.transport.abort()  # not this protocol

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.acked.done():
            self.acked.set_exception(SinkRefused(f"the sink closed the connection ({exc})"))
        if self.on_lost is not None:
            self.on_lost()


@dataclass(eq=False)
class _Subscription:
    id: str
    connection: _Connection
    transport: asyncio.Transport
    cursor: int  # the last seq_id written
    max_buffer_bytes: int
    finished: bool = False  # the closing batch is written


class Pusher:
    """Every subscription of a run actor to its current run's log."""

    def __init__(self) -> None:
        self._log = FrameLog()
        self._subs: dict[str, _Subscription] = {}
        self._flush_pending = False
        self.dropped = 0  # subscriptions dropped on overflow

    def follow(self, frames: FrameLog) -> None:
        """Push `frames` from now on (a new run). Subscriptions to the old log are dropped:
        their cursors mean nothing in the new one."""
        self.drop_all()
        self._log = frames
        frames.on_change = self.changed

    def __len__(self) -> int:
        return len(self._subs)

    async def attach(
        self, frames: FrameLog, sink: SinkAddress, subscription_id: str, after_seq: int
    ) -> bool:
        """Connect to the sink and push `frames` after `after_seq`, then every new batch.

        False if the pusher follows another log by the time the sink answered (a reset).
        Raises SinkRefused (wrong secret, unknown subscription) or OSError (unreachable)."""
        connection = await _connect(sink)
        transport = connection.transport
        assert transport is not None
        try:
            transport.write(hello(sink.secret, subscription_id))
            await asyncio.wait_for(connection.acked, HANDSHAKE_TIMEOUT_S)
        except BaseException:
            transport.abort()
            raise
        if frames is not self._log:
            transport.abort()
            return False
        sub = _Subscription(
            subscription_id, connection, transport, max(after_seq, 0), sink.max_buffer_bytes
        )
        old = self._subs.pop(subscription_id, None)
        if old is not None:
            old.transport.abort()
        self._subs[subscription_id] = sub
        connection.on_lost = lambda: self._forget(sub)
        self.changed()  # the replay goes out with the next flush
        return True

    def changed(self) -> None:
        if not self._flush_pending and self._subs:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def drop_all(self) -> None:
        """End every subscription now (a reset): readers go on with `read`."""
        for sub in list(self._subs.values()):
            sub.transport.abort()
        self._subs.clear()

    def _flush(self) -> None:
        self._flush_pending = False
        closed = self._log.closed
        # Readers at the same cursor get the same bytes: encode once per cursor.
        encoded: dict[int, tuple[bytes, int]] = {}
        for sub in list(self._subs.values()):
            if sub.finished:
                continue
            if sub.cursor not in encoded:
                frames = self._log.after(sub.cursor)
                if not frames and not closed:
                    continue
                last = frames[-1].seq_id if frames else sub.cursor
                encoded[sub.cursor] = (batch_message(frames, closed), last)
            data, last = encoded[sub.cursor]
            sub.transport.write(data)
            sub.cursor = last
            if closed:
                sub.finished = True
                sub.transport.close()  # after the buffer drains
            elif sub.transport.get_write_buffer_size() > sub.max_buffer_bytes:
                log.info("subscription %s overflowed; dropped", sub.id)
                self.dropped += 1
                self._drop(sub)

    def _drop(self, sub: _Subscription) -> None:
        sub.transport.abort()
        self._forget(sub)

    def _forget(self, sub: _Subscription) -> None:
        if self._subs.get(sub.id) is sub:
            del self._subs[sub.id]


async def _connect(sink: SinkAddress) -> _Connection:
    loop = asyncio.get_running_loop()
    if sink.unix_path is not None and sink.node_id == ray.get_runtime_context().get_node_id():
        try:
            _, connection = await loop.create_unix_connection(_Connection, sink.unix_path)
            return connection
        except OSError as exc:
            log.info("sink socket %s unusable (%s); trying TCP", sink.unix_path, exc)
    _, connection = await loop.create_connection(_Connection, sink.host, sink.port)
    return connection
