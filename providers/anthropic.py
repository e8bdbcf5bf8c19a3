"""Anthropic Messages, streamed as raw SSE events through the official SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rayruns.providers._vendor import (
    LoopClient,
    VendorOptions,
    close_quietly,
    connection_error,
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
from rayruns.providers.errors import ProviderError
from rayruns.providers.settings import ProviderSettings

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic, AsyncStream
    from anthropic.types import MessageDeltaUsage, MessageParam, RawMessageStreamEvent, Usage

_KEY_VARIABLES = "RAYRUNS_ANTHROPIC_API_KEY or ANTHROPIC_API_KEY"
DEFAULT_MAX_TOKENS = 4096

# The status each error type stands for, for errors sent inside a 200 stream (`event: error`).
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicOptions(VendorOptions):
    """The common options, plus any Messages parameter (`thinking`, `tools`, `tool_choice`,
    `top_k`, `metadata`, ...), sent in the request body as given. `max_tokens` defaults to 4096,
    since the API requires it; `stop` is sent as `stop_sequences`; system messages as `system`.
    """

    reserved: ClassVar[frozenset[str]] = frozenset(
        {"model", "messages", "stream", "system", "stop_sequences"}
        | {"extra_body", "extra_headers", "extra_query", "timeout"}
    )


class AnthropicProvider(Provider):
    """Text, thinking and tool_use blocks; usage from message_start and message_delta."""

    name = "anthropic"
    options_model = AnthropicOptions

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._clients: LoopClient[AsyncAnthropic] = LoopClient(self._build_client, _close_client)

    def _build_client(self) -> AsyncAnthropic:
        import anthropic

        s = self.settings
        return anthropic.AsyncAnthropic(
            api_key=require_key(s.anthropic_api_key, self.name, _KEY_VARIABLES),
            base_url=s.anthropic_base_url,
            timeout=anthropic.Timeout(s.provider_timeout_s, connect=s.provider_connect_timeout_s),
            max_retries=s.provider_max_retries,
        )

    async def aclose(self) -> None:
        """Close the cached client and its idle connections."""
        await self._clients.aclose()

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderEvent, None]:
        opts = call.options
        assert isinstance(opts, AnthropicOptions)
        with StreamGuard(call):
            response: AsyncStream[RawMessageStreamEvent] | None = None
            try:
                key = require_key(self.settings.anthropic_api_key, self.name, _KEY_VARIABLES)
                client = self._clients.get()
                with _mapped_errors(key):
                    response = await client.messages.create(
                        model=call.model,
                        max_tokens=opts.max_tokens or DEFAULT_MAX_TOKENS,
                        messages=_messages(call),
                        stream=True,
                        extra_body=_body(call, opts),
                    )
                    reader = EventReader(call.usage)
                    async for event in response:
                        for out in reader.feed(event):
                            yield out
                    if not reader.finished:
                        raise incomplete(self.name, "message_stop")
            finally:
                if response is not None:
                    await close_quietly(response.close)
                call.ending.upstream_closed = True


def _messages(call: ProviderCall) -> list[MessageParam]:
    return cast(
        "list[MessageParam]",
        [{"role": m.role, "content": m.content} for m in call.messages if m.role != "system"],
    )


def _body(call: ProviderCall, opts: AnthropicOptions) -> dict[str, Any]:
    # Everything optional goes in the body as is, so the SDK sends exactly what was asked for.
    system = "\n\n".join(m.content for m in call.messages if m.role == "system")
    common = {
        "system": system or None,
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "stop_sequences": opts.stop_list,
    }
    return {**opts.extras, **{k: v for k, v in common.items() if v is not None}}


@dataclass
class _PartialTool:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    initial: object = None


class EventReader:
    """Turns raw Messages events into events; a tool_use block becomes one ToolCall at its stop."""

    def __init__(self, usage: TokenUsage) -> None:
        self.usage = usage
        self.finished = False
        self._tools: dict[int, _PartialTool] = {}
        self._deltas = 0

    def feed(self, event: RawMessageStreamEvent) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        if event.type == "message_start":
            start = event.message.usage
            self.usage.prompt_tokens = _prompt_tokens(start)
            self.usage.completion_tokens = start.output_tokens
        elif event.type == "content_block_start":
            block = event.content_block
            if block.type == "tool_use":
                self._tools[event.index] = _PartialTool(block.id, block.name, initial=block.input)
            elif block.type == "text" and block.text:
                out.append(TextDelta(text=block.text, block=event.index))
            elif block.type == "thinking" and block.thinking:
                out.append(ReasoningDelta(text=block.thinking, block=event.index))
        elif event.type == "content_block_delta":
            delta = event.delta
            if delta.type != "signature_delta":
                # An estimate until message_delta's count, so a cancel keeps what was received.
                self._deltas += 1
                self.usage.completion_tokens = max(self.usage.completion_tokens, self._deltas)
            if delta.type == "text_delta":
                out.append(TextDelta(text=delta.text, block=event.index))
            elif delta.type == "thinking_delta":
                out.append(ReasoningDelta(text=delta.thinking, block=event.index))
            elif delta.type == "input_json_delta" and event.index in self._tools:
                self._tools[event.index].arguments.append(delta.partial_json)
        elif event.type == "content_block_stop":
            tool = self._tools.pop(event.index, None)
            if tool is not None:
                out.append(ToolCall(id=tool.id, name=tool.name, arguments=_arguments(tool)))
        elif event.type == "message_delta":
            final = event.usage
            self.usage.completion_tokens = final.output_tokens
            if final.input_tokens is not None:
                self.usage.prompt_tokens = _prompt_tokens(final)
        elif event.type == "message_stop":
            self.finished = True
        return out


def _prompt_tokens(usage: Usage | MessageDeltaUsage) -> int:
    # input_tokens leaves out what was written to or read from the prompt cache.
    cached = (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)
    return (usage.input_tokens or 0) + cached


def _arguments(tool: _PartialTool) -> str:
    # A tool without parameters streams no input_json_delta; its input is the start's `{}`.
    return "".join(tool.arguments) or json.dumps(tool.initial or {})


async def _close_client(client: AsyncAnthropic) -> None:
    await client.close()


@contextmanager
def _mapped_errors(key: str) -> Iterator[None]:
    """Every SDK or transport failure, of the request or of the stream, as a ProviderError."""
    import anthropic

    try:
        yield
    except (RunCancelled, ProviderError):
        raise
    except anthropic.APIStatusError as exc:
        message = exc.api_message or exc.message
        status = exc.status_code
        if status < 400:  # `event: error` inside a 200 stream: its type says what it means
            status = _ERROR_STATUS.get(str(exc.type), 0)
            if not status:
                raise stream_error("anthropic", message, key) from exc
        raise status_error("anthropic", status, message, key) from exc
    except anthropic.APIConnectionError as exc:
        timed_out = isinstance(exc, anthropic.APITimeoutError)
        raise connection_error("anthropic", exc, key, timed_out=timed_out) from exc
    except anthropic.APIError as exc:
        raise stream_error("anthropic", exc.message, key) from exc
    except Exception as exc:
        mapped = wire_error("anthropic", exc, key)
        if mapped is None:
            raise
        raise mapped from exc
