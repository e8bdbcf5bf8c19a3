"""Gemini, streamed through google-genai (`client.aio.models.generate_content_stream`).

The SDK's stream is a chain of async generators around an httpx response; closing the outer one
leaves the inner ones (and so the response) to garbage collection. To close the connection
on a cancel at once, the provider gives the SDK its own httpx client, whose response hook hands
each response to the stream that opened it, and closes that response itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rayruns.providers._vendor import (
    BlockCounter,
    ErrorTable,
    Opened,
    StreamReader,
    VendorProvider,
    close_quietly,
    system_text,
)
from rayruns.providers.base import ProviderCall, ProviderEvent, ReasoningDelta, TextDelta, ToolCall
from rayruns.providers.errors import ErrorDetail, ProviderBadRequest
from rayruns.providers.options import VendorOptions
from rayruns.providers.tool_wire import gemini_contents, gemini_tools

if TYPE_CHECKING:
    import httpx
    from google import genai
    from google.genai import types

# The responses opened by the stream whose first chunk is being awaited; see `_Chunks`.
_OPENED: ContextVar[list[httpx.Response] | None] = ContextVar("rayruns_google_opened", default=None)


class GoogleOptions(VendorOptions):
    """The common options, plus the `GenerateContentConfig` fields in `passthrough`, in either of
    the SDK's spellings (`top_k` or `topK`), validated by the SDK when the call starts.
    `max_tokens` is sent as `max_output_tokens`, `stop` as `stop_sequences`, system messages as
    `system_instruction`.
    """

    # `GenerateContentConfig` of the SDK, less what the provider sets (system_instruction,
    # candidate_count, automatic function calling and continuation), the transport
    # (`http_options`, `should_return_http_response`), the common options, and the fields
    # the Gemini Developer API refuses (routing_config, model_selection_config,
    # audio_timestamp, model_armor_config, generation_output_config).
    passthrough: ClassVar[frozenset[str]] = frozenset(
        {"top_k", "seed", "presence_penalty", "frequency_penalty", "response_logprobs"}
        | {"logprobs", "response_mime_type", "response_schema", "response_json_schema"}
        | {"safety_settings", "thinking_config", "cached_content"}
        | {"response_modalities", "media_resolution", "speech_config", "image_config"}
        | {"audio_transcription_config", "enable_enhanced_civic_answers", "service_tier"}
        | {"labels", "continuation_token", "store"}
    )
    camel_case: ClassVar[bool] = True
    vendor_names: ClassVar[dict[str, str]] = {
        "max_output_tokens": "max_tokens",
        "stop_sequences": "stop",
    }


@dataclass(frozen=True)
class _Clients:
    """The genai client and the httpx client it sends through (which the provider owns)."""

    genai: genai.Client
    http: httpx.AsyncClient


class _Chunks:
    """The SDK's chunks. The request goes out at the first; while it is awaited, the response
    hook hands each response to `opened`, so that closing closes them at once."""

    def __init__(self, chunks: AsyncIterator[types.GenerateContentResponse]) -> None:
        self._chunks = chunks
        self._first = True
        self.opened: list[httpx.Response] = []

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> types.GenerateContentResponse:
        if not self._first:
            return await anext(self._chunks)
        self._first = False
        token = _OPENED.set(self.opened)
        try:
            return await anext(self._chunks)
        finally:
            _OPENED.reset(token)

    async def aclose(self) -> None:
        for response in self.opened:
            await close_quietly(response.aclose)
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await close_quietly(aclose)


async def _remember_response(response: httpx.Response) -> None:
    opened = _OPENED.get()
    if opened is not None:
        opened.append(response)


def _contents(call: ProviderCall) -> list[types.ContentDict]:
    contents = cast("list[types.ContentDict]", gemini_contents(call.messages))
    if not contents:  # the SDK would raise a bare ValueError before any request
        raise ProviderBadRequest("Gemini needs at least one user or assistant message")
    return contents


def _config(
    call: ProviderCall, opts: GoogleOptions, timeout_s: float | None
) -> types.GenerateContentConfig:
    from google.genai import types
    from pydantic import ValidationError

    fields: dict[str, Any] = {
        **opts.request_fields(),
        "system_instruction": system_text(call),
        **gemini_tools(call),
        # One request per call, no Python functions called on the model's behalf.
        "automatic_function_calling": {"disable": True},
        "automatic_continuation": False,
    }
    if timeout_s is not None:
        fields["http_options"] = types.HttpOptions(timeout=math.ceil(timeout_s * 1000))
    try:
        return types.GenerateContentConfig.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ProviderBadRequest(
            f"provider_options do not fit google's GenerateContentConfig: {problems}"
        ) from None


class ChunkReader(StreamReader["types.GenerateContentResponse"]):
    """Turns response chunks into events; usage_metadata counts are running totals."""

    end_marker = "a finish_reason"

    def __init__(self, call: ProviderCall) -> None:
        super().__init__(call)
        self.blocked: str | None = None
        self._calls = 0
        # Gemini's calls may have no id: made unique in a conversation by run and step.
        self._prefix = f"{call.run_id[-12:]}-{call.step}"
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
                        id=call.id or f"call-{self._prefix}-{self._calls}",
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

    def end(self, vendor: str) -> None:
        if self.blocked is not None:
            raise ProviderBadRequest(
                f"{vendor} blocked the prompt: {self.blocked}",
                ErrorDetail(vendor_message=self.blocked),
            )
        super().end(vendor)


class GoogleProvider(VendorProvider[_Clients, "types.GenerateContentResponse"]):
    """Text and thought parts, whole function calls; usage from usage_metadata."""

    name = "google"
    reader_class = ChunkReader
    options_model = GoogleOptions

    def build_client(self, key: str) -> _Clients:
        import httpx
        from google import genai
        from google.genai import types

        s = self.settings
        timeout = httpx.Timeout(s.provider_timeout_s, connect=s.provider_connect_timeout_s)

        async def keep_timeouts(request: httpx.Request) -> None:
            # genai passes one number for every phase (the server's, or a request's lower one):
            # keep the separate connect timeout, and never go above the server's.
            given = request.extensions.get("timeout") or {}
            request.extensions["timeout"] = {
                phase: min(limit, given.get(phase) or limit)
                for phase, limit in timeout.as_dict().items()
                if limit is not None
            }

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
        return _Clients(genai.Client(api_key=key, vertexai=False, http_options=options), http)

    async def close_client(self, client: _Clients) -> None:
        await client.genai.aio.aclose()
        await client.http.aclose()

    async def open(
        self, client: _Clients, call: ProviderCall, options: GoogleOptions
    ) -> Opened[types.GenerateContentResponse]:
        config = _config(call, options, self.request_timeout(options))
        chunks = await client.genai.aio.models.generate_content_stream(
            model=call.model, contents=_contents(call), config=config
        )
        wrapped = _Chunks(chunks)
        return Opened(wrapped, wrapped.aclose)

    def error_table(self) -> ErrorTable:
        from google.genai import errors

        return ((errors.APIError, "vendor"), (errors.UnknownApiResponseError, "vendor"))

    def error_detail(self, exc: BaseException) -> ErrorDetail:
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            # A code of a 200 stream's in-band error is the status it stands for.
            return ErrorDetail(status=exc.code or None, vendor_message=exc.message)
        return ErrorDetail(vendor_message=str(exc))
