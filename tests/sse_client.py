"""A test-side SSE decoder that follows the WHATWG rules (HTML §9.2.6), fed from raw bytes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    type: str
    data: str
    last_event_id: str
    id_field_seen: bool

    @property
    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def done(self) -> bool:
        return self.data == "[DONE]"


class SSEDecoder:
    """Incremental: feed bytes, get the events completed so far."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pending_cr = False
        self._bom_checked = False
        self._data: list[str] = []
        self._type = ""
        self._last_id = ""
        self._id_seen = False
        self._decoder = __import__("codecs").getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> list[Event]:
        text = self._decoder.decode(chunk)
        if not self._bom_checked and text:
            self._bom_checked = True
            text = text.removeprefix("\ufeff")
        events: list[Event] = []
        for line in self._lines(text):
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _lines(self, text: str) -> Iterable[str]:
        # Lines end in CRLF, LF or CR; a CR at a chunk's end may be followed by LF in the next.
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = False
        self._buffer += text
        while True:
            positions = [p for p in (self._buffer.find("\r"), self._buffer.find("\n")) if p >= 0]
            if not positions:
                return
            end = min(positions)
            line = self._buffer[:end]
            if self._buffer[end] == "\r":
                if end + 1 < len(self._buffer):
                    skip = 2 if self._buffer[end + 1] == "\n" else 1
                else:
                    skip, self._pending_cr = 1, True
            else:
                skip = 1
            self._buffer = self._buffer[end + skip :]
            yield line

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._type = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
            self._id_seen = True
        # "retry" and unknown fields are ignored here
        return None

    def _dispatch(self) -> Event | None:
        id_seen, self._id_seen = self._id_seen, False
        if not self._data:
            self._type = ""
            return None
        event = Event(self._type or "message", "\n".join(self._data), self._last_id, id_seen)
        self._data, self._type = [], ""
        return event


async def events_of(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
