"""OpenAI Chat Completions, streamed through the official SDK; any compatible server by base URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from rayruns.providers._vendor import (
    BlockCounter,
    StainlessProvider,
    StreamReader,
)
from rayruns.providers.base import ProviderCall, ProviderEvent, ReasoningDelta, TextDelta, ToolCall
from rayruns.providers.options import VendorOptions
from rayruns.providers.tool_wire import openai_messages, openai_tools

if TYPE_CHECKING:
    from openai import AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam


class OpenAIOptions(VendorOptions):
    """The common options, plus the Chat Completions parameters in `passthrough`, sent in the
    request body as given. Tools come from the run's `tools`, `tool_choice` and
    `parallel_tool_calls`.

    `max_tokens` is sent as `max_completion_tokens`, which reasoning models require; for a
    compatible server that predates it, set `max_tokens_param="max_tokens"`.
    """

    # `CompletionCreateParams` of the SDK, less what the provider sets (model, messages,
    # stream_options, n), the common options, and what the stream reader could not carry
    # (audio output, the deprecated `functions`).
    passthrough: ClassVar[frozenset[str]] = frozenset(
        {"frequency_penalty", "presence_penalty", "seed", "logit_bias", "logprobs"}
        | {"top_logprobs", "response_format"}
        | {"reasoning_effort", "verbosity", "prediction", "web_search_options", "moderation"}
        | {"user", "safety_identifier", "metadata", "store", "service_tier"}
        | {"prompt_cache_key", "prompt_cache_options", "prompt_cache_retention"}
    )
    vendor_names: ClassVar[dict[str, str]] = {"max_completion_tokens": "max_tokens"}

    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"


def _messages(call: ProviderCall) -> list[ChatCompletionMessageParam]:
    return cast("list[ChatCompletionMessageParam]", openai_messages(call.messages))


def _body(opts: OpenAIOptions) -> dict[str, Any]:
    fields = opts.request_fields()
    if "max_completion_tokens" in fields and opts.max_tokens_param == "max_tokens":
        fields["max_tokens"] = fields.pop("max_completion_tokens")
    return fields


@dataclass
class _PartialTool:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChunkReader(StreamReader["ChatCompletionChunk"]):
    """Turns chunks into events; tool-call deltas are gathered by index until a finish_reason."""

    end_marker = "a finish_reason"

    def __init__(self, call: ProviderCall) -> None:
        super().__init__(call)
        self._blocks = BlockCounter()
        self._tools: dict[int, _PartialTool] = {}

    def feed(self, chunk: ChatCompletionChunk) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        deltas = 0
        for choice in chunk.choices or []:
            if choice.index != 0:
                continue
            delta = choice.delta
            extra = delta.model_extra or {}
            reasoning = extra.get("reasoning_content") or extra.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events.append(ReasoningDelta(text=reasoning, block=self._blocks.block("reasoning")))
            for text in (delta.content, delta.refusal):
                if text:
                    events.append(TextDelta(text=text, block=self._blocks.block("text")))
            for tool in delta.tool_calls or []:
                deltas += 1
                part = self._tools.setdefault(tool.index, _PartialTool())
                # Some servers repeat the id and name in every delta: keep them, never append.
                part.id = tool.id or part.id
                if tool.function is not None:
                    part.name = tool.function.name or part.name
                    part.arguments.append(tool.function.arguments or "")
            if choice.finish_reason is not None:
                self.finished = True
                events += self._tool_calls()
        if chunk.usage is not None:
            self.usage.prompt_tokens = chunk.usage.prompt_tokens
            self.usage.completion_tokens = chunk.usage.completion_tokens
        else:
            # An estimate until the vendor's count arrives, so a cancel keeps what was received.
            self.usage.completion_tokens += deltas + sum(
                not isinstance(e, ToolCall) for e in events
            )
        return events

    def _tool_calls(self) -> list[ProviderEvent]:
        calls: list[ProviderEvent] = [
            ToolCall(
                id=part.id or f"call_{index}", name=part.name, arguments="".join(part.arguments)
            )
            for index, part in sorted(self._tools.items())
        ]
        self._tools.clear()
        return calls


class OpenAIProvider(StainlessProvider["AsyncOpenAI", "ChatCompletionChunk"]):
    """Text, reasoning (`reasoning_content` of compatible servers) and tool calls by index."""

    name, options_model, reader_class = "openai", OpenAIOptions, ChunkReader

    def vendor_message(self, exc: Any) -> str | None:
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else None
        return message if isinstance(message, str) else str(exc.message)

    async def create(
        self, client: AsyncOpenAI, call: ProviderCall, options: OpenAIOptions
    ) -> AsyncStream[ChatCompletionChunk]:
        return await client.chat.completions.create(
            model=call.model,
            messages=_messages(call),
            stream=True,
            stream_options={"include_usage": True},
            extra_body={**_body(options), **openai_tools(call)},
            timeout=self.sdk_timeout(options),
        )
