"""A TCP proxy for tests that cuts live connections on demand, as a flaky network would.

It runs its own event loop in a thread, so sync tests (a browser, the blocking client) and
async ones can use it alike. It reads the HTTP request heads going through it, so a test can
see what a client sent when it reconnected (e.g. `Last-Event-ID`).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_HEAD = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]\r\n(.*?)\r\n\r\n", re.S)


@dataclass(frozen=True)
class RequestHead:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    path: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class CuttingProxy:
    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._conns: set[_Conn] = set()
        self._heads: list[RequestHead] = []
        self._seen = threading.Condition()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CuttingProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for conn in list(self._conns):
                _abort(conn)
            await asyncio.sleep(0)

        self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def cut(self, path_contains: str) -> int:
        """Drop (TCP reset) every live connection whose latest request path has this in it."""

        async def cut() -> int:
            hit = [c for c in self._conns if path_contains in c.path]
            for conn in hit:
                _abort(conn)
            return len(hit)

        return self._call(cut())

    def heads(self, predicate: Callable[[RequestHead], bool] = lambda _: True) -> list[RequestHead]:
        with self._seen:
            return [h for h in self._heads if predicate(h)]

    def wait_for(
        self, predicate: Callable[[RequestHead], bool], timeout_s: float = 30
    ) -> RequestHead:
        """The first request head that matches, waiting for it to come through."""
        with self._seen:
            found: list[RequestHead] = []

            def match() -> bool:
                found[:] = [h for h in self._heads if predicate(h)]
                return bool(found)

            if not self._seen.wait_for(match, timeout_s):
                raise AssertionError("no matching request came through the proxy")
            return found[0]

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        except OSError:
            writer.transport.abort()
            return
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, conn), self._pipe(up_reader, writer, None)
            )
        finally:
            self._conns.discard(conn)
            _abort(conn)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests_of: _Conn | None
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if requests_of is not None:
                    self._note_heads(requests_of, chunk)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    def _note_heads(self, conn: _Conn, chunk: bytes) -> None:
        for m in _HEAD.finditer(chunk):
            headers = {}
            for line in m.group(3).split(b"\r\n"):
                name, _, value = line.partition(b":")
                headers[name.strip().lower().decode()] = value.strip().decode()
            head = RequestHead(m.group(1).decode(), m.group(2).decode(), headers)
            conn.path = head.path
            with self._seen:
                self._heads.append(head)
                self._seen.notify_all()


def _abort(conn: _Conn) -> None:
    conn.client.transport.abort()
    conn.upstream.transport.abort()
