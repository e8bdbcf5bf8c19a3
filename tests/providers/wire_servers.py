"""A local server that speaks each vendor's streaming wire format, scripted by the model name.

One HTTP/1.1 server on 127.0.0.1 answers all three vendors, told apart by the path:

    POST /v1/chat/completions                           OpenAI Chat Completions: `data: {chunk}`
                                                        ... `data: [DONE]`
    POST /v1/messages                                   Anthropic Messages: named SSE events,
                                                        message_start ... message_stop
    POST /v1beta/models/{model}:streamGenerateContent   Gemini (`?alt=sse`): SSE of
                                                        GenerateContentResponse, no sentinel

The model name is the script, `<scenario>[-<n>[-<ms>]]`:

    text            "Hello from the wire server." in five chunks, usage, the end marker
    text-N          N chunks "w0 ", "w1 ", ...
    reasoning       three reasoning chunks, then text
    tools           a text chunk, then two tool calls (get_weather, get_time)
    error-S         HTTP status S (400, 401, 403, 429, 500, 529...) with the vendor's error JSON;
                    a 401 echoes the key it was sent, as some vendors do
    cut-N           N chunks, then the connection is closed in the middle of the body
    truncated-N     N chunks, then the body ends cleanly but without the vendor's end marker
    stall-N         N chunks, then nothing until the client goes away
    slow-N-MS       N chunks, MS milliseconds apart
    inband-N        N chunks, then the vendor's in-stream error event

Every connection and request is recorded (`Recorder`), with the time the server noticed the
client went away, so tests can assert that a cancel reached the server as a closed connection.

    server = start_wire_server()        # a background thread; server.url, server.recorder
    server.stop()

    python -m tests.providers.wire_servers --port 8123
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal

Vendor = Literal["openai", "anthropic", "google"]
Ending = Literal["done", "cut", "truncated", "stall", "inband"]

_GEMINI_PATH = re.compile(r"^/v1[a-z0-9]*/models/(?P<model>[^:/?]+):streamGenerateContent")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


# --- scripts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    kind: Literal["text", "reasoning", "tool"]
    text: str = ""
    tool_id: str = ""
    tool_name: str = ""
    tool_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Script:
    pieces: tuple[Piece, ...] = ()
    ending: Ending = "done"
    delay_s: float = 0.0
    status: int = 200

    @property
    def has_tools(self) -> bool:
        return any(p.kind == "tool" for p in self.pieces)


def _words(n: int) -> tuple[Piece, ...]:
    return tuple(Piece("text", f"w{i} ") for i in range(n))


def _tool(tool_id: str, name: str, args: tuple[str, ...]) -> Piece:
    return Piece("tool", tool_id=tool_id, tool_name=name, tool_args=args)


HELLO = ("Hello ", "from ", "the ", "wire ", "server.")
THINKING = ("Let me ", "think ", "about it.")
TOOLS = (
    Piece("text", "Checking."),
    _tool("call_w1", "get_weather", ('{"city": ', '"Paris"}')),
    _tool("call_w2", "get_time", ('{"tz": "Eu', 'rope/Paris"}')),
)


def parse_script(model: str) -> Script:
    """The script a model name asks for; anything unknown is plain text."""
    name, *params = model.split("-")
    nums = [int(p) for p in params if p.isdigit()]
    n = nums[0] if nums else 3
    if name == "text":
        pieces = _words(nums[0]) if nums else tuple(Piece("text", t) for t in HELLO)
        return Script(pieces)
    if name == "reasoning":
        thoughts = tuple(Piece("reasoning", t) for t in THINKING)
        return Script(thoughts + tuple(Piece("text", t) for t in HELLO))
    if name == "tools":
        return Script(TOOLS)
    if name == "error":
        return Script(status=n if nums else 500)
    if name in ("cut", "truncated", "stall", "inband"):
        ending: Ending = name  # type: ignore[assignment]
        return Script(_words(n), ending=ending)
    if name == "slow":
        return Script(_words(n), delay_s=(nums[1] if len(nums) > 1 else 10) / 1000)
    return Script(tuple(Piece("text", t) for t in HELLO))


# --- vendor wire formats ---------------------------------------------------------------------


def _count_words(value: Any, key: str = "") -> int:
    """Prompt "tokens": words of every string under a content/text/system key."""
    if isinstance(value, str):
        return len(value.split()) if key in ("content", "text", "system") else 0
    if isinstance(value, dict):
        return sum(_count_words(v, k) for k, v in value.items())
    if isinstance(value, list):
        return sum(_count_words(v, key) for v in value)
    return 0


class WireFormat:
    """Renders one response of one vendor: SSE frames per piece, the ending, the errors."""

    content_type = "text/event-stream"
    request_id_header: str | None = None  # where the vendor sends its id of the request

    def __init__(self, request: RecordedRequest) -> None:
        self.request = request
        self.prompt_tokens = _count_words(request.body)
        self.sent = 0
        self.reasoning_sent = 0

    def count(self, piece: Piece) -> None:
        self.sent += 1
        self.reasoning_sent += piece.kind == "reasoning"

    def opening(self) -> list[bytes]:
        return []

    def piece(self, piece: Piece) -> list[bytes]:
        raise NotImplementedError

    def closing(self, script: Script) -> list[bytes]:
        raise NotImplementedError

    def inband_error(self) -> list[bytes]:
        raise NotImplementedError

    def error_body(self, status: int) -> dict[str, Any]:
        raise NotImplementedError

    def presented_key(self) -> str:
        return ""


class OpenAIWire(WireFormat):
    request_id_header = "x-request-id"

    def __init__(self, request: RecordedRequest) -> None:
        super().__init__(request)
        options = request.body.get("stream_options") or {}
        self.include_usage = bool(options.get("include_usage"))
        self.tools_sent = 0

    @staticmethod
    def _frame(data: Any) -> bytes:
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": f"chatcmpl-wire{self.request.id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.request.model,
            "system_fingerprint": "fp_wire",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return self._frame(chunk)

    def opening(self) -> list[bytes]:
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def piece(self, piece: Piece) -> list[bytes]:
        if piece.kind == "text":
            return [self._chunk({"content": piece.text})]
        if piece.kind == "reasoning":
            return [self._chunk({"reasoning_content": piece.text})]
        index, self.tools_sent = self.tools_sent, self.tools_sent + 1
        head = {
            "index": index,
            "id": piece.tool_id,
            "type": "function",
            "function": {"name": piece.tool_name, "arguments": ""},
        }
        frames = [self._chunk({"tool_calls": [head]})]
        for part in piece.tool_args:
            delta = {"tool_calls": [{"index": index, "function": {"arguments": part}}]}
            frames.append(self._chunk(delta))
        return frames

    def closing(self, script: Script) -> list[bytes]:
        frames = [self._chunk({}, "tool_calls" if script.has_tools else "stop")]
        if self.include_usage:
            usage = {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.sent,
                "total_tokens": self.prompt_tokens + self.sent,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": self.reasoning_sent},
            }
            frames.append(
                self._frame(
                    {
                        "id": f"chatcmpl-wire{self.request.id}",
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": self.request.model,
                        "system_fingerprint": "fp_wire",
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        return [*frames, b"data: [DONE]\n\n"]

    def inband_error(self) -> list[bytes]:
        error = {"message": "The server had an error while processing your request."}
        return [self._frame({"error": {**error, "type": "server_error", "param": None}})]

    def presented_key(self) -> str:
        return self.request.headers.get("authorization", "").removeprefix("Bearer ")

    def error_body(self, status: int) -> dict[str, Any]:
        messages = {
            400: ("Invalid value for 'temperature'.", "invalid_request_error", None),
            401: (
                f"Incorrect API key provided: {self.presented_key()}.",
                "invalid_request_error",
                "invalid_api_key",
            ),
            403: ("Project does not have access to this model.", "invalid_request_error", None),
            429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
        }
        message, kind, code = messages.get(
            status, ("The server had an error while processing your request.", "server_error", None)
        )
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class AnthropicWire(WireFormat):
    _ERROR_TYPES = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        529: "overloaded_error",
    }
    request_id_header = "request-id"

    def __init__(self, request: RecordedRequest) -> None:
        super().__init__(request)
        self.index = -1
        self.open_kind: str | None = None

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    def opening(self) -> list[bytes]:
        message = {
            "id": f"msg_wire{self.request.id}",
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.prompt_tokens,
                "output_tokens": 1,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
        return [
            self._event("message_start", {"type": "message_start", "message": message}),
            self._event("ping", {"type": "ping"}),
        ]

    def _stop_block(self) -> list[bytes]:
        if self.open_kind is None:
            return []
        frames = []
        if self.open_kind == "reasoning":
            delta = {"type": "signature_delta", "signature": "EqQBCgIYAhIMwire"}
            frames.append(self._delta(delta))
        self.open_kind = None
        stop = {"type": "content_block_stop", "index": self.index}
        return [*frames, self._event("content_block_stop", stop)]

    def _start_block(self, block: dict[str, Any], kind: str) -> list[bytes]:
        frames = self._stop_block()
        self.index += 1
        self.open_kind = kind
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return [*frames, self._event("content_block_start", start)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return self._event("content_block_delta", data)

    def piece(self, piece: Piece) -> list[bytes]:
        frames: list[bytes] = []
        if piece.kind == "text":
            if self.open_kind != "text":
                frames += self._start_block({"type": "text", "text": ""}, "text")
            return [*frames, self._delta({"type": "text_delta", "text": piece.text})]
        if piece.kind == "reasoning":
            if self.open_kind != "reasoning":
                block = {"type": "thinking", "thinking": "", "signature": ""}
                frames += self._start_block(block, "reasoning")
            return [*frames, self._delta({"type": "thinking_delta", "thinking": piece.text})]
        block = {"type": "tool_use", "id": piece.tool_id, "name": piece.tool_name, "input": {}}
        frames += self._start_block(block, "tool")
        for part in piece.tool_args:
            frames.append(self._delta({"type": "input_json_delta", "partial_json": part}))
        return [*frames, *self._stop_block()]

    def closing(self, script: Script) -> list[bytes]:
        delta = {
            "type": "message_delta",
            "delta": {
                "stop_reason": "tool_use" if script.has_tools else "end_turn",
                "stop_sequence": None,
            },
            "usage": {"output_tokens": self.sent},
        }
        return [
            *self._stop_block(),
            self._event("message_delta", delta),
            self._event("message_stop", {"type": "message_stop"}),
        ]

    def inband_error(self) -> list[bytes]:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return [self._event("error", {"type": "error", "error": error})]

    def presented_key(self) -> str:
        # Recent SDKs send the key as a bearer token; the documented header is x-api-key.
        bearer = self.request.headers.get("authorization", "").removeprefix("Bearer ")
        return self.request.headers.get("x-api-key", "") or bearer

    def error_body(self, status: int) -> dict[str, Any]:
        kind = self._ERROR_TYPES.get(status, "api_error")
        messages = {
            401: f"invalid x-api-key: {self.presented_key()}",
            429: "Number of request tokens has exceeded your per-minute rate limit.",
        }
        message = messages.get(status, f"wire server scripted {kind}")
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_wire{self.request.id}",
        }


class GoogleWire(WireFormat):
    _STATUSES = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }

    def _chunk(self, parts: list[dict[str, Any]], finish: str | None = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        usage: dict[str, Any] = {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": self.sent - self.reasoning_sent,
            "totalTokenCount": self.prompt_tokens + self.sent,
        }
        if self.reasoning_sent:
            usage["thoughtsTokenCount"] = self.reasoning_sent
        data = {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.request.model,
            "responseId": f"wire{self.request.id}",
        }
        return b"data: " + json.dumps(data).encode() + b"\r\n\r\n"

    def piece(self, piece: Piece) -> list[bytes]:
        if piece.kind == "text":
            return [self._chunk([{"text": piece.text}])]
        if piece.kind == "reasoning":
            return [self._chunk([{"text": piece.text, "thought": True}])]
        args = json.loads("".join(piece.tool_args))
        call = {"functionCall": {"name": piece.tool_name, "args": args}}
        return [self._chunk([{**call, "thoughtSignature": "CiQBwire"}])]

    def closing(self, script: Script) -> list[bytes]:
        return [self._chunk([{"text": ""}], "STOP")]

    def inband_error(self) -> list[bytes]:
        error = {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}
        return [b"data: " + json.dumps({"error": error}).encode() + b"\r\n\r\n"]

    def presented_key(self) -> str:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.request.path).query)
        return self.request.headers.get("x-goog-api-key", "") or query.get("key", [""])[0]

    def error_body(self, status: int) -> dict[str, Any]:
        messages = {
            401: f"API key not valid: {self.presented_key()}. Please pass a valid API key.",
            429: "Resource has been exhausted (e.g. check quota).",
        }
        message = messages.get(status, "An internal error has occurred.")
        code = self._STATUSES.get(status, "INTERNAL")
        return {"error": {"code": status, "message": message, "status": code}}


_WIRES: dict[Vendor, type[WireFormat]] = {
    "openai": OpenAIWire,
    "anthropic": AnthropicWire,
    "google": GoogleWire,
}


# --- the recorder ----------------------------------------------------------------------------


@dataclass(eq=False)
class RecordedRequest:
    id: int
    connection: RecordedConnection = field(repr=False)
    vendor: Vendor | None
    path: str
    model: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float
    chunks_sent: int = 0
    outcome: str | None = None
    ended_at: float | None = None
    ended: threading.Event = field(default_factory=threading.Event, repr=False)


@dataclass(eq=False)
class RecordedConnection:
    id: int
    opened_at: float
    closed_at: float | None = None
    closed_by: Literal["client", "server"] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event, repr=False)


class Recorder:
    """What the server saw, safe to read from any thread. Times are `time.monotonic()`."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self.connections: list[RecordedConnection] = []
        self.requests: list[RecordedRequest] = []

    def _open(self) -> RecordedConnection:
        with self._lock:
            conn = RecordedConnection(next(self._ids), time.monotonic())
            self.connections.append(conn)
            self._lock.notify_all()
            return conn

    def _close(self, conn: RecordedConnection, by: Literal["client", "server"]) -> None:
        with self._lock:
            if conn.closed_at is None:
                conn.closed_at, conn.closed_by = time.monotonic(), by
                conn.closed.set()
                self._lock.notify_all()

    def _receive(self, request: RecordedRequest) -> None:
        with self._lock:
            request.connection.requests.append(request)
            self.requests.append(request)
            self._lock.notify_all()

    def _end(self, request: RecordedRequest, outcome: str) -> None:
        with self._lock:
            if request.outcome is None:
                request.outcome, request.ended_at = outcome, time.monotonic()
                request.ended.set()
                self._lock.notify_all()

    def next_id(self) -> int:
        return next(self._ids)

    def last_request(self, model: str | None = None) -> RecordedRequest:
        with self._lock:
            found = [r for r in self.requests if model is None or r.model == model]
        if not found:
            raise LookupError(f"no request for model {model!r}")
        return found[-1]

    def open_connections(self) -> list[RecordedConnection]:
        with self._lock:
            return [c for c in self.connections if c.closed_at is None]

    def wait_all_answered(self, timeout: float) -> bool:
        """Wait until every request seen so far has ended (answered, or its client gone)."""
        with self._lock:
            return self._lock.wait_for(
                lambda: all(r.outcome is not None for r in self.requests), timeout
            )

    def wait_all_closed(self, timeout: float) -> bool:
        """Wait until every connection seen so far has closed."""
        with self._lock:
            return self._lock.wait_for(
                lambda: all(c.closed_at is not None for c in self.connections), timeout
            )


# --- the HTTP server -------------------------------------------------------------------------


class _ClientGone(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One client connection: parses HTTP/1.1 requests, streams scripted responses."""

    def __init__(self, recorder: Recorder, live: set[_Connection]) -> None:
        self.recorder = recorder
        self.live = live
        self.buffer = b""
        self.busy = False
        self.gone = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport: asyncio.Transport | None = None
        self.record: RecordedConnection | None = None
        self.task: asyncio.Task[None] | None = None

    # asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.record = self.recorder._open()
        self.live.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._dispatch()

    def eof_received(self) -> bool:
        self._lost("client")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("client" if not self.gone.is_set() else "server")
        self.writable.set()
        self.live.discard(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # requests ------------------------------------------------------------------------------

    def _lost(self, by: Literal["client", "server"]) -> None:
        if not self.gone.is_set():
            self.gone.set()
            assert self.record is not None
            self.recorder._close(self.record, by)

    def _dispatch(self) -> None:
        if self.busy or self.gone.is_set():
            return
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return
        body, self.buffer = rest[:length], rest[length:]
        self.busy = True
        self.task = asyncio.ensure_future(self._serve(method, target, headers, body))

    async def _serve(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        try:
            await self._respond(method, target, headers, body)
        except _ClientGone:
            pass
        finally:
            self.busy = False
        self._dispatch()

    async def _respond(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> None:
        path = urllib.parse.unquote(target)
        vendor: Vendor | None = None
        model = ""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if path.startswith("/v1/chat/completions"):
            vendor, model = "openai", str(body.get("model", ""))
        elif path.startswith("/v1/messages"):
            vendor, model = "anthropic", str(body.get("model", ""))
        elif match := _GEMINI_PATH.match(path):
            vendor, model = "google", match["model"]
        assert self.record is not None
        request = RecordedRequest(
            self.recorder.next_id(), self.record, vendor, target, model, headers, body,
            time.monotonic(),
        )  # fmt: skip
        self.recorder._receive(request)
        if method == "GET" and path == "/":
            self._send_json(200, {"status": "ok"})
            return self.recorder._end(request, "completed")
        if vendor is None or method != "POST":
            self._send_json(404, {"error": {"message": f"no route for {method} {path}"}})
            return self.recorder._end(request, "error_404")
        script = parse_script(model)
        wire = _WIRES[vendor](request)
        if script.status != 200:
            ids = (
                {wire.request_id_header: f"req_wire{request.id}"} if wire.request_id_header else {}
            )
            self._send_json(script.status, wire.error_body(script.status), ids)
            return self.recorder._end(request, f"error_{script.status}")
        try:
            await self._stream(request, script, wire)
        except _ClientGone:
            self.recorder._end(request, "client_gone")
            raise

    def _send_json(
        self, status: int, data: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(data).encode()
        extra = {"content-length": str(len(payload)), **(headers or {})}
        head = self._head(status, "application/json", extra)
        self._write(head + payload)

    @staticmethod
    def _head(status: int, content_type: str, extra: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        lines += [f"content-type: {content_type}", "cache-control: no-cache"]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _write(self, data: bytes) -> None:
        if self.gone.is_set() or self.transport is None or self.transport.is_closing():
            raise _ClientGone
        self.transport.write(data)

    async def _send_frames(self, frames: list[bytes]) -> None:
        if not frames:
            return
        data = b"".join(frames)
        self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        if not self.writable.is_set():
            await self.writable.wait()

    async def _pause(self, seconds: float | None) -> None:
        """Wait `seconds` (None: forever), unless the client goes away first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), seconds)
        if self.gone.is_set():
            raise _ClientGone

    async def _stream(self, request: RecordedRequest, script: Script, wire: WireFormat) -> None:
        head = self._head(200, wire.content_type, {"transfer-encoding": "chunked"})
        self._write(head)
        opening = wire.opening()
        for i, piece in enumerate(script.pieces):
            if i and script.delay_s:
                await self._pause(script.delay_s)
            wire.count(piece)
            await self._send_frames([*opening, *wire.piece(piece)])
            opening = []
            request.chunks_sent += 1
        await self._send_frames(opening)
        if script.ending == "stall":
            await self._pause(None)
        if script.ending == "cut":
            assert self.transport is not None
            self.recorder._end(request, "cut")
            self._lost("server")
            self.transport.close()
            return
        if script.ending == "done":
            await self._send_frames(wire.closing(script))
        elif script.ending == "inband":
            await self._send_frames(wire.inband_error())
        self._write(b"0\r\n\r\n")
        outcome = {"done": "completed", "truncated": "truncated", "inband": "inband_error"}
        self.recorder._end(request, outcome[script.ending])


class WireServer:
    """The server on its own thread and event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.recorder = Recorder()
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._live: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wire-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_urls(self) -> dict[Vendor, str]:
        """The base URL each vendor's SDK wants."""
        return {"openai": f"{self.url}/v1", "anthropic": self.url, "google": self.url}

    def start(self) -> WireServer:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("wire server did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            self._loop.create_server(
                lambda: _Connection(self.recorder, self._live), self._host, self._port
            )
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self._live):
            conn._lost("server")
            if conn.transport is not None:
                conn.transport.abort()
            if conn.task is not None:
                conn.task.cancel()
        await self._server.wait_closed()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> WireServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_wire_server(host: str = "127.0.0.1", port: int = 0) -> WireServer:
    """Start the server on a background thread; `port=0` picks a free one."""
    return WireServer(host, port).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = start_wire_server(args.host, args.port)
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
