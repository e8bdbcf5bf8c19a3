"""How frames travel from a run actor to a reader's sink, off Ray's object plane.

Ray carries the control: a reader calls `RunActor.attach(run_id, sink, subscription, after_seq)`
with its sink's `SinkAddress`, secret included (the Ray call is the trusted channel). The actor
then opens one connection per subscription to the sink (a Unix socket on the same node, TCP
otherwise) and speaks, as length-prefixed msgpack messages:

    actor → sink   [secret, subscription_id]        the hello, first and once
    sink  → actor  ACK                              one byte: accepted (else the sink hangs up)
    actor → sink   [closed, [[seq_id, message_type, data], …]]   each batch, in log order

A subscription ends when either side closes its connection; the reader then catches up with
`RunActor.read` (seq ids keep it exact) and may attach again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from rayruns.actors.frames import LoggedFrame

HEADER = struct.Struct("!I")
ACK = b"\x01"
# Larger than any batch a run logs in one loop turn (a frame's text is at most a few MB), small
# enough that a hostile length cannot make a sink allocate without bound.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Before the secret is checked, a peer gets no more than this.
MAX_HELLO_BYTES = 1024


class SinkRefused(ConnectionError):
    """The sink did not accept the actor's hello (wrong secret, or no such subscription)."""


class BadMessage(ValueError):
    """Bytes on a sink connection that are not a message of this protocol."""


@dataclass(frozen=True)
class SinkAddress:
    """Where a reader process takes frames, and the bounds it asks of the actors that push."""

    node_id: str
    unix_path: str | None
    host: str
    port: int
    secret: bytes
    # Unsent bytes an actor may hold for one subscription before it drops it.
    max_buffer_bytes: int


def message(payload: Any) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def hello(secret: bytes, subscription_id: str) -> bytes:
    return message([secret, subscription_id])


def batch_message(frames: list[LoggedFrame], closed: bool) -> bytes:
    # LoggedFrame is a tuple: msgpack writes it as the array [seq_id, message_type, data].
    return message([closed, frames])


def parse_hello(payload: Any) -> tuple[bytes, str]:
    match payload:
        case [bytes() as secret, str() as subscription_id]:
            return secret, subscription_id
    raise BadMessage("not a hello")


def parse_batch(payload: Any) -> tuple[list[LoggedFrame], bool]:
    match payload:
        case [bool() as closed, list() as rows]:
            try:
                return [LoggedFrame(int(s), str(t), str(d)) for s, t, d in rows], closed
            except (TypeError, ValueError) as exc:
                raise BadMessage("not a batch of frames") from exc
    raise BadMessage("not a batch")


class MessageBuffer:
    """Splits a byte stream into decoded messages, however the stream was chunked."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self.max_bytes = max_bytes

    def feed(self, data: bytes) -> list[Any]:
        """The messages completed by `data`. Raises BadMessage on a length over the limit or
        a body that is not msgpack."""
        self._buffer += data
        out: list[Any] = []
        start = 0
        end = len(self._buffer)
        while end - start >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer, start)
            if size > self.max_bytes:
                raise BadMessage(f"message of {size} bytes is over the limit")
            if end - start - HEADER.size < size:
                break
            body = self._buffer[start + HEADER.size : start + HEADER.size + size]
            try:
                out.append(msgpack.unpackb(body, raw=False))
            except (ValueError, msgpack.UnpackException) as exc:
                raise BadMessage("message body is not msgpack") from exc
            start += HEADER.size + size
        if start:
            del self._buffer[:start]
        return out
