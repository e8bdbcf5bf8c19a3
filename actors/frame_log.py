"""A run's frame log: append-only, numbered from 1, read from any `seq_id` by many readers
(pulled with `wait_beyond`/`after`, or pushed by a listener on `on_change`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rayruns.actors.frames import LoggedFrame


class LogFull(Exception):
    """A content frame would take the log past its frame or byte cap."""


class FrameLog:
    """`max_frames` / `max_bytes` cap the content frames (`append`); the terminal frames a run
    ends with (`extend`) are always taken, so a capped run still ends well-formed.
    `on_frames(n)` is told of every n frames logged (the run actor counts them)."""

    def __init__(
        self,
        max_frames: int | None = None,
        max_bytes: int | None = None,
        on_frames: Callable[[int], None] | None = None,
    ) -> None:
        self._on_frames = on_frames
        self._frames: list[LoggedFrame] = []
        self._closed = False
        self._changed = asyncio.Event()
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._bytes = 0
        # Called on every append and on close (the push side of the data plane listens here).
        self.on_change: Callable[[], None] | None = None

    @property
    def next_seq(self) -> int:
        return len(self._frames) + 1

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, message_type: str, data: str) -> None:
        """Log a content frame; raises LogFull (logging nothing) past a cap."""
        assert not self._closed, "a closed log takes no frames"
        size = len(data.encode())
        if self._max_frames is not None and len(self._frames) + 1 > self._max_frames:
            raise LogFull(f"the run reached its cap of {self._max_frames} frames")
        if self._max_bytes is not None and self._bytes + size > self._max_bytes:
            raise LogFull(f"the run reached its cap of {self._max_bytes} bytes of frames")
        self._bytes += size
        self._frames.append(LoggedFrame(len(self._frames) + 1, message_type, data))
        self._wake()
        if self._on_frames is not None:
            self._on_frames(1)

    def extend(self, frames: list[LoggedFrame]) -> None:
        assert not self._closed, "a closed log takes no frames"
        assert not frames or frames[0].seq_id == self.next_seq, "frames must continue the log"
        self._frames.extend(frames)
        self._wake()
        if self._on_frames is not None and frames:
            self._on_frames(len(frames))

    def close(self) -> None:
        self._closed = True
        self._wake()

    def after(self, seq: int) -> list[LoggedFrame]:
        """Every frame with `seq_id > seq` (seq_id n sits at index n-1)."""
        return self._frames[max(seq, 0) :]

    def snapshot(self) -> list[LoggedFrame]:
        return list(self._frames)

    async def wait_beyond(self, seq: int) -> None:
        """Return once a frame past `seq` exists or the log is closed."""
        while len(self._frames) <= seq and not self._closed:
            await self._changed.wait()

    def _wake(self) -> None:
        # Waking every waiter at once, then arming a fresh event, lets each reader take
        # everything appended in the meantime as one batch.
        self._changed.set()
        self._changed = asyncio.Event()
        if self.on_change is not None:
            self.on_change()
