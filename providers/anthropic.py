"""Anthropic Messages, streamed as raw SSE events through the official SDK."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rayruns.providers._vendor import StainlessProvider, StreamReader, system_text
from rayruns.providers.base import ProviderCall, ProviderEvent, ReasoningDelta, TextDelta, ToolCall
from rayruns.providers.options import VendorOptions
from rayruns.providers.tool_wire import anthropic_messages, anthropic_tools

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic, AsyncStream
    from anthropic.types import MessageDeltaUsage, MessageParam, RawMessageStreamEvent, Usage

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
    """The common options, plus the Messages parameters in `passthrough`, sent in the request
    body as given. `max_tokens` defaults to 4096, since the API requires it; `stop` is sent as
    `stop_sequences`; system messages as `system`.
    """

    # `MessageCreateParams` of the SDK, less what the provider sets (model, messages, system,
    # stream), the common options, and the account's scope (`workspace_id`, `user_profile_id`,
    # which the SDK sends as headers).
    passthrough: ClassVar[frozenset[str]] = frozenset(
        {"thinking", "output_config", "metadata", "service_tier"}
        | {"speed", "inference_geo", "cache_control", "container", "diagnostics"}
    )
    vendor_names: ClassVar[dict[str, str]] = {"stop_sequences": "stop"}


def _messages(call: ProviderCall) -> list[MessageParam]:
    return cast("list[MessageParam]", anthropic_messages(call.messages))


def _body(call: ProviderCall, opts: AnthropicOptions) -> dict[str, Any]:
    fields = opts.request_fields()
    fields.pop("max_tokens", None)  # a parameter of its own: the API requires it
    system = system_text(call)
    fields |= anthropic_tools(call)
    return fields if system is None else {**fields, "system": system}


@dataclass
class _PartialTool:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    initial: object = None


class EventReader(StreamReader["RawMessageStreamEvent"]):
    """Turns raw Messages events into events; a tool_use block becomes one ToolCall at its stop."""

    end_marker = "message_stop"

    def __init__(self, call: ProviderCall) -> None:
        super().__init__(call)
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


class AnthropicProvider(StainlessProvider["AsyncAnthropic", "RawMessageStreamEvent"]):
    """Text, thinking and tool_use blocks; usage from message_start and message_delta."""

    name, options_model, reader_class = "anthropic", AnthropicOptions, EventReader

    def vendor_message(self, exc: Any) -> str | None:
        # A status error also carries the body's own message, apart from the SDK's summary.
        return str(getattr(exc, "api_message", None) or exc.message)

    def vendor_status(self, exc: Any) -> int | None:
        if exc.status_code < 400:  # `event: error` inside a 200 stream: its type says what it is
            return _ERROR_STATUS.get(str(exc.type))
        return int(exc.status_code)

    async def create(
        self, client: AsyncAnthropic, call: ProviderCall, options: AnthropicOptions
    ) -> AsyncStream[RawMessageStreamEvent]:
        return await client.messages.create(
            model=call.model,
            max_tokens=options.max_tokens or DEFAULT_MAX_TOKENS,
            messages=_messages(call),
            stream=True,
            extra_body=_body(call, options),
            timeout=self.sdk_timeout(options),
        )
