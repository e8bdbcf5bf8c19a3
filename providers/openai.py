"""OpenAI Chat Completions, streamed through the official SDK; any compatible server by base URL."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from rayruns.providers._vendor import (
    BlockCounter,
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
    from openai import AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

_KEY_VARIABLES = "RAYRUNS_OPENAI_API_KEY or OPENAI_API_KEY"


class OpenAIOptions(VendorOptions):
    """The common options, plus any Chat Completions parameter (`seed`, `tools`, `tool_choice`,
    `response_format`, `reasoning_effort`, `user`, ...), sent in the request body as given.

    `max_tokens` is sent as `max_completion_tokens`, which reasoning models require; for a
    compatible server that predates it, set `max_tokens_param="max_tokens"`.
    """

    reserved: ClassVar[frozenset[str]] = frozenset(
        {"model", "messages", "stream", "stream_options", "n", "max_completion_tokens"}
        | {"extra_body", "extra_headers", "extra_query", "timeout"}
    )

    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"


class OpenAIProvider(Provider):
    """Text, reasoning (`reasoning_content` of compatible servers) and tool calls by index."""

    name = "openai"
    options_model = OpenAIOptions

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._clients: LoopClient[AsyncOpenAI] = LoopClient(self._build_client, _close_client)

    def _build_client(self) -> AsyncOpenAI:
        import openai

        s = self.settings
        return openai.AsyncOpenAI(
            api_key=require_key(s.openai_api_key, self.name, _KEY_VARIABLES),
            base_url=s.openai_base_url,
            timeout=openai.Timeout(s.provider_timeout_s, connect=s.provider_connect_timeout_s),
            max_retries=s.provider_max_retries,
        )

    async def aclose(self) -> None:
        """Close the cached client and its idle connections."""
        await self._clients.aclose()

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderEvent, None]:
        opts = call.options
        assert isinstance(opts, OpenAIOptions)
        with StreamGuard(call):
            response: AsyncStream[ChatCompletionChunk] | None = None
            try:
                key = require_key(self.settings.openai_api_key, self.name, _KEY_VARIABLES)
                client = self._clients.get()
                with _mapped_errors(key):
                    response = await client.chat.completions.create(
                        model=call.model,
                        messages=_messages(call),
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_body=_body(opts),
                    )
                    reader = ChunkReader(call.usage)
                    async for chunk in response:
                        for event in reader.feed(chunk):
                            yield event
                    if not reader.finished:
                        raise incomplete(self.name, "a finish_reason")
            finally:
                if response is not None:
                    await close_quietly(response.close)
                call.ending.upstream_closed = True


def _messages(call: ProviderCall) -> list[ChatCompletionMessageParam]:
    return cast(
        "list[ChatCompletionMessageParam]",
        [{"role": m.role, "content": m.content} for m in call.messages],
    )


def _body(opts: OpenAIOptions) -> dict[str, Any]:
    # Everything optional goes in the body as is, so the SDK sends exactly what was asked for.
    common = {
        "temperature": opts.temperature,
        "top_p": opts.top_p,
        "stop": opts.stop,
        opts.max_tokens_param: opts.max_tokens,
    }
    return {**opts.extras, **{k: v for k, v in common.items() if v is not None}}


@dataclass
class _PartialTool:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChunkReader:
    """Turns chunks into events; tool-call deltas are gathered by index until a finish_reason."""

    def __init__(self, usage: TokenUsage) -> None:
        self.usage = usage
        self.finished = False
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


async def _close_client(client: AsyncOpenAI) -> None:
    await client.close()


@contextmanager
def _mapped_errors(key: str) -> Iterator[None]:
    """Every SDK or transport failure, of the request or of the stream, as a ProviderError."""
    import openai

    try:
        yield
    except (RunCancelled, ProviderError):
        raise
    except openai.APIStatusError as exc:
        raise status_error("openai", exc.status_code, _vendor_message(exc), key) from exc
    except openai.APIConnectionError as exc:
        timed_out = isinstance(exc, openai.APITimeoutError)
        raise connection_error("openai", exc, key, timed_out=timed_out) from exc
    except openai.APIError as exc:
        raise stream_error("openai", _vendor_message(exc), key) from exc
    except Exception as exc:
        mapped = wire_error("openai", exc, key)
        if mapped is None:
            raise
        raise mapped from exc


def _vendor_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return cast(str, body["message"])
    return str(exc.message)
