"""The reader side of the frame data plane: one sink per reader process (and event loop).

A sink listens on a Unix socket (for run actors on this node) and on TCP at the node's address
(for the others). Run actors connect once per subscription, prove they were handed the sink's
secret, and push batches (actors/wire.py). The sink sorts them into one bounded queue per
subscription; a subscription whose reader stops taking batches stops being read from its
socket, so its actor sees the backlog and drops it, while every other subscription flows on.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hmac
import logging
import os
import secrets
import shutil
import tempfile
import uuid
import weakref
from collections import deque
from pathlib import Path
from typing import cast

import ray

from rayruns.actors.frames import LoggedFrame
from rayruns.actors.wire import (
    ACK,
    MAX_HELLO_BYTES,
    BadMessage,
    MessageBuffer,
    SinkAddress,
    parse_batch,
    parse_hello,
)

log = logging.getLogger(__name__)

# A connection that has not said a valid hello by then is closed.
HELLO_TIMEOUT_S = 10.0

Batch = tuple[list[LoggedFrame], bool]


class Subscription:
    """One reader's queue of pushed batches. `next()` returns None once the subscription is
    over without a closing batch (connection dropped, overflow, reset, bad data): the reader
    then catches up with `read`."""

    def __init__(self, sink: FrameSink, subscription_id: str, max_batches: int) -> None:
        self.id = subscription_id
        self._sink = sink
        self._max = max_batches
        self._queue: deque[Batch] = deque()
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._connection: _SinkConnection | None = None
        self._paused = False
        self._complete = False  # the closing batch arrived

    async def next(self) -> Batch | None:
        while not self._queue:
            if self._ended:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        # Everything waiting goes as one batch: a reader that fell behind catches up in one
        # step (one SSE write), as one `read` would give it.
        frames, closed = self._queue.popleft()
        while self._queue:
            more, closed = self._queue.popleft()
            frames = frames + more
        batch = (frames, closed)
        if self._paused and len(self._queue) <= self._max // 2 and self._connection is not None:
            self._paused = False
            self._connection.resume()
        return batch

    def close(self) -> None:
        """The reader is done with it: hang up, so the actor stops pushing."""
        self._sink._forget(self.id)
        self._end()
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def hang_up(self) -> None:
        """Drop the connection as a network failure would (the reader then reads)."""
        if self._connection is not None:
            self._connection.close()

    # -- called by the connection ---------------------------------------------------------

    def bind(self, connection: _SinkConnection) -> bool:
        if self._connection is not None or self._ended:
            return False
        self._connection = connection
        return True

    def deliver(self, batch: Batch) -> None:
        self._complete = self._complete or batch[1]
        self._queue.append(batch)
        if len(self._queue) >= self._max and not self._paused and self._connection is not None:
            # The reader is behind: stop reading this socket; the actor's buffer for this
            # subscription fills and it drops the subscription.
            self._paused = True
            self._connection.pause()
        self._wake()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _SinkConnection(asyncio.Protocol):
    def __init__(self, sink: FrameSink) -> None:
        self._sink = sink
        self._buffer = MessageBuffer(MAX_HELLO_BYTES)
        self._transport: asyncio.Transport | None = None
        self._subscription: Subscription | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (Serve's replica loops) are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._buffer.feed(data)
            for payload in messages:
                if self._subscription is None:
                    self._greet(payload)
                else:
                    self._subscription.deliver(parse_batch(payload))
        except BadMessage as exc:
            log.warning("sink connection dropped: %s", exc)
            self._sink.refused += 1
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if exc is not None:
            log.debug("sink connection lost: %s", exc)
        if self._subscription is not None:
            if not self._subscription._complete:
                self._sink.cut_short += 1
            self._subscription._end()
            self._subscription._connection = None

    def pause(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _greet(self, payload: object) -> None:
        secret, subscription_id = parse_hello(payload)
        if not hmac.compare_digest(secret, self._sink._secret):
            raise BadMessage("wrong sink secret")
        subscription = self._sink._find(subscription_id)
        if subscription is None or not subscription.bind(self):
            raise BadMessage(f"no open subscription {subscription_id!r}")
        assert self._transport is not None and self._timer is not None
        self._timer.cancel()
        self._subscription = subscription
        self._buffer.max_bytes = MessageBuffer().max_bytes
        self._sink.accepted += 1
        self._transport.write(ACK)


class FrameSink:
    """Takes pushed frames for every reader in this process that runs on this event loop."""

    # One sink per event loop (and bounds): a loop's transports cannot serve another loop.
    _by_loop: weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, dict[tuple[int, int], asyncio.Task[FrameSink]]
    ] = weakref.WeakKeyDictionary()

    def __init__(self, max_buffer_bytes: int, max_batches: int) -> None:
        self._max_buffer_bytes = max_buffer_bytes
        self._max_batches = max_batches
        self._subscriptions: dict[str, Subscription] = {}
        self._servers: list[asyncio.Server] = []
        self._dir: Path | None = None
        self._secret = secrets.token_bytes(32)
        self.accepted = 0  # hellos accepted
        self.refused = 0  # connections closed for a bad hello or bad data
        self.cut_short = 0  # accepted connections lost before their closing batch
        self.address: SinkAddress

    @classmethod
    async def for_this_loop(cls, max_buffer_bytes: int, max_batches: int) -> FrameSink:
        """This loop's sink with these bounds, started on first use."""
        loop = asyncio.get_running_loop()
        sinks = cls._by_loop.setdefault(loop, {})
        key = (max_buffer_bytes, max_batches)
        starting = sinks.get(key)
        if starting is None or (starting.done() and starting.exception() is not None):
            starting = sinks[key] = loop.create_task(cls(max_buffer_bytes, max_batches)._start())
        return await asyncio.shield(starting)

    async def _start(self) -> FrameSink:
        loop = asyncio.get_running_loop()
        self._dir = Path(tempfile.mkdtemp(prefix="rayruns-sink-"))  # mode 0700
        atexit.register(shutil.rmtree, self._dir, True)
        path = str(self._dir / "s")
        self._servers.append(await loop.create_unix_server(lambda: _SinkConnection(self), path))
        host: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        tcp = await loop.create_server(lambda: _SinkConnection(self), host, 0)
        self._servers.append(tcp)
        port: int = tcp.sockets[0].getsockname()[1]
        self.address = SinkAddress(
            node_id=ray.get_runtime_context().get_node_id(),
            unix_path=path,
            host=host,
            port=port,
            secret=self._secret,
            max_buffer_bytes=self._max_buffer_bytes,
        )
        log.debug("frame sink on %s and %s:%d (pid %d)", path, host, port, os.getpid())
        return self

    def subscribe(self) -> Subscription:
        subscription = Subscription(self, uuid.uuid4().hex, self._max_batches)
        self._subscriptions[subscription.id] = subscription
        return subscription

    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions.values())

    async def close(self) -> None:
        for subscription in list(self._subscriptions.values()):
            subscription.close()
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _find(self, subscription_id: str) -> Subscription | None:
        return self._subscriptions.get(subscription_id)

    def _forget(self, subscription_id: str) -> None:
        self._subscriptions.pop(subscription_id, None)
