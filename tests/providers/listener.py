"""A TCP listener on 127.0.0.1 that records every connection and the bytes it received.

It stands for "another host": a provider option that could redirect a request (and its key)
would show up here. It answers each connection with a 500 and closes it, so a client that does
reach it fails at once instead of waiting.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from types import TracebackType

_ANSWER = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(2.0)
        received = b""
        try:
            # Enough to see the request line and headers (where a key would travel).
            while b"\r\n\r\n" not in received and len(received) < 65536:
                data = conn.recv(4096)
                if not data:
                    break
                received += data
        except OSError:
            pass
        # Recorded before answering, so a client that got its answer has been recorded.
        with self.server.lock:
            self.server.received.append(received)
        with contextlib.suppress(OSError):
            conn.sendall(_ANSWER)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.received: list[bytes] = []


class RecordingListener:
    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def received(self) -> list[bytes]:
        """What each connection sent, in order; empty when nothing ever connected."""
        with self._server.lock:
            return list(self._server.received)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> RecordingListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
