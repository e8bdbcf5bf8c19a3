"""A minimal, cheap HTTP/1.1 + SSE client on raw asyncio streams (the load generator's).

One connection per request, `Connection: close`; chunked or Content-Length bodies; SSE events
split on the blank line, only `data:` and `event:` fields looked at. Enough for the two servers
the bench drives (both encode with sse_starlette), and a fraction of httpx's CPU per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HTTPError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    @classmethod
    def parse(cls, base_url: str) -> Target:
        parts = urlsplit(base_url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)


def _request_bytes(target: Target, method: str, path: str, body: Any | None) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Connection: close\r\nAccept: */*\r\n"
    )
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


class Response:
    """An open response: status, headers, and its body read as chunks."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        headers: dict[str, str],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.status = status
        self.headers = headers
        self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = headers.get("content-length")
        self._remaining = int(length) if length is not None else None

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._reader
        if self._chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0], 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                yield data[:-2]
        elif self._remaining is not None:
            if self._remaining:
                yield await reader.readexactly(self._remaining)
        else:
            while data := await reader.read(65536):
                yield data

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def events(self) -> AsyncGenerator[tuple[str, str], None]:
        """(event type, data) of each SSE event with data; comments and ids are skipped."""
        buffer = b""
        sep = b""
        async for chunk in self.chunks():
            buffer += chunk
            if not sep:
                if b"\r\n" in buffer:
                    sep = b"\r\n"
                elif b"\n" in buffer:
                    sep = b"\n"
                else:
                    continue
            blocks = buffer.split(sep + sep)
            buffer = blocks.pop()
            for block in blocks:
                kind = "message"
                data: list[bytes] = []
                for line in block.split(sep):
                    if line.startswith(b"data:"):
                        data.append(line[6:] if line[5:6] == b" " else line[5:])
                    elif line.startswith(b"event:"):
                        kind = line[6:].strip().decode()
                if data:
                    yield kind, b"\n".join(data).decode()

    def close(self) -> None:
        self._writer.close()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


async def open_request(target: Target, method: str, path: str, body: Any | None = None) -> Response:
    reader, writer = await asyncio.open_connection(target.host, target.port, limit=1 << 20)
    writer.write(_request_bytes(target, method, path, body))
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Response(reader, writer, status, headers)


async def request_json(target: Target, method: str, path: str, body: Any | None = None) -> Any:
    response = await open_request(target, method, path, body)
    try:
        data = await response.read()
    finally:
        response.close()
    if response.status >= 400:
        raise HTTPError(response.status, data)
    return json.loads(data) if data else None
