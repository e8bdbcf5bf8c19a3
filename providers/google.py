"""Gemini, streamed through google-genai (`client.aio.models.generate_content_stream`).

The SDK's stream is a chain of async generators around an httpx response; closing the outer one
leaves the inner ones (and so the response) to garbage collection. To close the connection
on a cancel at once, the provider gives the SDK its own httpx client, whose response hook hands
each response to the stream that opened it, and closes that response itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rayruns.providers._vendor import (
    BlockCounter,
    LoopClient,
    VendorOptions,
    close_quietly,
    incomplete,
    require_key,
    status_error,
    stream_error,
    wire_error,
)
from rayruns.providers.base import (
    Provider,
    ProviderCall,
    ProviderEvent,
    ReasoningDelta,
    RunCancelled,
    StreamGuard,
    TextDelta,
    TokenUsage,
    ToolCall,
)
from rayruns.providers.errors import ProviderBadRequest, ProviderError
from rayruns.providers.settings import ProviderSettings

if TYPE_CHECKING:
    import httpx
    from google import genai
    from google.genai import types

_KEY_VARIABLES = "RAYRUNS_GOOGLE_API_KEY, GEMINI_API_KEY or GOOGLE_API_KEY"

# The responses opened by the stream whose first step is running; see `_opening`.
_OPENED: ContextVar[list[httpx.Response] | None] = ContextVar("rayruns_google_opened", default=None)


class GoogleOptions(VendorOptions):
    """The common options, plus any `GenerateContentConfig` field (`thinking_config`, `tools`,
    `tool_config`, `top_k`, `seed`, `response_mime_type`, `safety_settings`, ...), validated by
    the SDK when the call starts. `max_tokens` is sent as `max_output_tokens`, `stop` as
    `stop_sequences`, system messages as `system_instruction`.
    """

    reserved: ClassVar[frozenset[str]] = frozenset(
        {"system_instruction", "max_output_tokens", "stop_sequences", "candidate_count"}
        | {"http_options", "automatic_function_calling", "automatic_continuation"}
    )


@dataclass(frozen=True)
class _Clients:
    """The genai client and the httpx client it sends through (which the provider owns)."""

    genai: genai.Client
    http: httpx.AsyncClient


class GoogleProvider(Provider):
    """Text and thought parts, whole function calls; usage from usage_metadata."""

    name = "google"
    options_model = GoogleOptions

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._clients: LoopClient[_Clients] = LoopClient(self._build_clients, _close_clients)

    def _build_clients(self) -> _Clients:
        import httpx
        from google import genai
        from google.genai import types

        s = self.settings
        timeout = httpx.Timeout(s.provider_timeout_s, connect=s.provider_connect_timeout_s)

        async def keep_timeouts(request: httpx.Request) -> None:
            # genai passes one number for every phase; restore the separate connect timeout.
            request.extensions["timeout"] = timeout.as_dict()

        http = httpx.AsyncClient(
            timeout=timeout,
            event_hooks={"request": [keep_timeouts], "response": [_remember_response]},
        )
        options = types.HttpOptions(
            base_url=s.google_base_url,
            timeout=int(s.provider_timeout_s * 1000),
            httpx_async_client=http,
            retry_options=types.HttpRetryOptions(attempts=s.provider_max_retries + 1),
        )
        key = require_key(s.google_api_key, self.name, _KEY_VARIABLES)
        return _Clients(genai.Client(api_key=key, vertexai=False, http_options=options), http)

    async def aclose(self) -> None:
        """Close the cached clients and their idle connections."""
        await self._clients.aclose()

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderEvent, None]:
        opts = call.options
        assert isinstance(opts, GoogleOptions)
        with StreamGuard(call):
            opened: list[httpx.Response] = []
            chunks: AsyncIterator[types.GenerateContentResponse] | None = None
            try:
                key = require_key(self.settings.google_api_key, self.name, _KEY_VARIABLES)
                config = _config(call, opts)
                client = self._clients.get().genai
                with _mapped_errors(key):
                    chunks = await client.aio.models.generate_content_stream(
                        model=call.model, contents=_contents(call), config=config
                    )
                    reader = ChunkReader(call.usage, call.step)
                    chunk = await _opening(chunks, opened)
                    while chunk is not None:
                        for event in reader.feed(chunk):
                            yield event
                        chunk = await anext(chunks, None)
                    if reader.blocked is not None:
                        raise ProviderBadRequest(
                            f"google blocked the prompt: {reader.blocked}",
                            {"status": None, "vendor_message": reader.blocked},
                        )
                    if not reader.finished:
                        raise incomplete(self.name, "a finish_reason")
            finally:
                for response in opened:
                    await close_quietly(response.aclose)
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await close_quietly(aclose)
                call.ending.upstream_closed = True


async def _opening(
    chunks: AsyncIterator[types.GenerateContentResponse], opened: list[httpx.Response]
) -> types.GenerateContentResponse | None:
    """The first chunk; the request goes out here, so the response hook sees `opened` here."""
    token = _OPENED.set(opened)
    try:
        return await anext(chunks, None)
    finally:
        _OPENED.reset(token)


async def _remember_response(response: httpx.Response) -> None:
    opened = _OPENED.get()
    if opened is not None:
        opened.append(response)


async def _close_clients(clients: _Clients) -> None:
    await clients.genai.aio.aclose()
    await clients.http.aclose()


def _contents(call: ProviderCall) -> list[types.ContentDict]:
    contents: list[types.ContentDict] = [
        {"role": "model" if m.role == "assistant" else "user", "parts": [{"text": m.content}]}
        for m in call.messages
        if m.role != "system"
    ]
    if not contents:  # the SDK would raise a bare ValueError before any request
        raise ProviderBadRequest("Gemini needs at least one user or assistant message")
    return contents


def _config(call: ProviderCall, opts: GoogleOptions) -> types.GenerateContentConfig:
    from google.genai import types
    from pydantic import ValidationError

    system = "\n\n".join(m.content for m in call.messages if m.role == "system")
    common = {
        "system_instruction": system or None,
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "max_output_tokens": opts.max_tokens,
        "stop_sequences": opts.stop_list,
    }
    fields: dict[str, Any] = {
        **opts.extras,
        **{k: v for k, v in common.items() if v is not None},
        # One request per call, no Python functions called on the model's behalf.
        "automatic_function_calling": {"disable": True},
        "automatic_continuation": False,
    }
    try:
        return types.GenerateContentConfig.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ProviderBadRequest(
            f"provider_options do not fit google's GenerateContentConfig: {problems}",
            {"status": None, "vendor_message": None},
        ) from None


class ChunkReader:
    """Turns response chunks into events; usage_metadata counts are running totals."""

    def __init__(self, usage: TokenUsage, step: int) -> None:
        self.usage = usage
        self.finished = False
        self.blocked: str | None = None
        self._step = step
        self._calls = 0
        self._blocks = BlockCounter()

    def feed(self, chunk: types.GenerateContentResponse) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        candidate = chunk.candidates[0] if chunk.candidates else None
        if candidate is None and chunk.prompt_feedback and chunk.prompt_feedback.block_reason:
            self.blocked = str(chunk.prompt_feedback.block_reason.value)
        parts = candidate.content.parts if candidate and candidate.content else None
        for part in parts or []:
            if part.function_call is not None:
                self._calls += 1
                call = part.function_call
                out.append(
                    ToolCall(
                        id=call.id or f"call-{self._step}-{self._calls}",
                        name=call.name or "",
                        arguments=json.dumps(call.args or {}),
                    )
                )
            elif part.text:
                kind = "reasoning" if part.thought else "text"
                block = self._blocks.block(kind)
                cls = ReasoningDelta if part.thought else TextDelta
                out.append(cls(text=part.text, block=block))
        if candidate is not None and candidate.finish_reason is not None:
            self.finished = True
        # An estimate until the vendor counts, so a cancel keeps what was received.
        self.usage.completion_tokens += len(out)
        meta = chunk.usage_metadata
        if meta is not None:
            self.usage.prompt_tokens = meta.prompt_token_count or self.usage.prompt_tokens
            if meta.candidates_token_count is not None:
                thoughts = meta.thoughts_token_count or 0
                self.usage.completion_tokens = meta.candidates_token_count + thoughts
        return out


@contextmanager
def _mapped_errors(key: str) -> Iterator[None]:
    """Every SDK or transport failure, of the request or of the stream, as a ProviderError."""
    from google.genai import errors

    try:
        yield
    except (RunCancelled, ProviderError):
        raise
    except errors.APIError as exc:
        if exc.code:
            raise status_error("google", exc.code, exc.message, key) from exc
        raise stream_error("google", exc.message, key) from exc
    except errors.UnknownApiResponseError as exc:
        raise stream_error("google", str(exc), key) from exc
    except Exception as exc:
        mapped = wire_error("google", exc, key)
        if mapped is None:
            raise
        raise mapped from exc
