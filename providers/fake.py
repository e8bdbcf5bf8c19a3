"""The built-in deterministic, offline provider: the demo, the tests and the benchmarks use it."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rayruns.providers.base import (
    CommonOptions,
    Count,
    JsonInt,
    Provider,
    ProviderCall,
    ProviderEvent,
    ReasoningDelta,
    RunCancelled,
    StreamGuard,
    TextDelta,
    ToolCall,
)
from rayruns.providers.errors import (
    ErrorDetail,
    ProviderAuthentication,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
)

_WORD = re.compile(r"\S+\s*|\s+")

FailKind = Literal["timeout", "rate_limit", "auth", "bad_request", "error"]

_FAILURES: dict[FailKind, tuple[type[ProviderError], int]] = {
    "timeout": (ProviderTimeout, 504),
    "rate_limit": (ProviderRateLimited, 429),
    "auth": (ProviderAuthentication, 401),
    "bad_request": (ProviderBadRequest, 400),
    "error": (ProviderError, 500),
}


class FakeToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class FakeStep(BaseModel):
    """One scripted step: its text (None: the fake's usual answer when it calls no tool) and the
    tool calls it ends with."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(default=None, max_length=4 * 1024 * 1024)
    tool_calls: list[FakeToolCall] = Field(default_factory=list, max_length=64)


class FakeOptions(CommonOptions):
    """The fake provider's knobs (docs/api.md), plus the common options (accepted, ignored)."""

    text: str | None = Field(default=None, max_length=4 * 1024 * 1024)
    delay_s: float = Field(default=0.0, ge=0, le=3600)
    chunk: Literal["word", "char"] = "word"
    reasoning: str | None = Field(default=None, max_length=4 * 1024 * 1024)
    fail: FailKind | None = None
    fail_after: JsonInt = Field(default=0, ge=0)
    hang_after: Count | None = None
    # With `hang_after`: the silent stream swallows its cancel (a provider that ignores it).
    ignore_cancel: bool = False
    tool_call: FakeToolCall | None = None
    # Step k of a run answers steps[k] (the last one repeats).
    steps: list[FakeStep] | None = Field(default=None, min_length=1, max_length=1000)
    # Benchmarks: each text chunk becomes its scheduled time ("<seconds> "), start + n × delay_s,
    # and the chunks keep to that schedule (a stalled pump catches up, as a vendor's tokens wait
    # in the socket), so a client measures a starved run as late frames, not as fewer frames.
    stamp: bool = False


def split_chunks(text: str, chunk: Literal["word", "char"]) -> list[str]:
    if chunk == "char":
        return list(text)
    return _WORD.findall(text)


class FakeProvider(Provider):
    """Answers from its knobs; usage: prompt = input words, completion = chunks sent."""

    name = "fake"
    options_model = FakeOptions

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderEvent, None]:
        opts = call.options
        assert isinstance(opts, FakeOptions)
        call.usage.prompt_tokens = sum(len(m.content.split()) for m in call.messages)
        script = opts.steps[min(call.step, len(opts.steps)) - 1] if opts.steps else None
        with StreamGuard(call):
            try:
                if opts.tool_call is not None and call.step == 1:
                    args = opts.tool_call.arguments
                    yield ToolCall(
                        id=f"call-{call.run_id[-12:]}-1",
                        name=opts.tool_call.name,
                        arguments=args if isinstance(args, str) else json.dumps(args),
                    )
                    call.usage.completion_tokens += 1
                    return
                text = _answer(opts, script, call)
                pieces: list[ProviderEvent] = []
                if opts.reasoning:
                    pieces += [ReasoningDelta(text=c) for c in split_chunks(opts.reasoning, "word")]
                pieces += [TextDelta(text=c) for c in split_chunks(text, opts.chunk)]
                sent = 0
                # Wall clock for the stamps a client compares with its own; the loop's clock to
                # sleep until each chunk's scheduled time.
                wall0, loop0 = time.time(), asyncio.get_running_loop().time()
                for piece in pieces:
                    if opts.fail is not None and sent == opts.fail_after:
                        raise _failure(opts.fail, sent)
                    if opts.hang_after is not None and sent == opts.hang_after:
                        await _silence(opts.ignore_cancel)
                    if opts.stamp:
                        due = loop0 + (sent + 1) * opts.delay_s
                        await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                    elif opts.delay_s:
                        await asyncio.sleep(opts.delay_s)
                    sent += 1
                    call.usage.completion_tokens = sent
                    if opts.stamp and isinstance(piece, TextDelta):
                        piece = TextDelta(text=f"{wall0 + sent * opts.delay_s:.6f} ")
                    yield piece
                if opts.fail is not None:
                    raise _failure(opts.fail, sent)
                for n, tool in enumerate(script.tool_calls if script else [], 1):
                    args = tool.arguments
                    yield ToolCall(
                        id=f"call-{call.run_id[-12:]}-{call.step}-{n}",
                        name=tool.name,
                        arguments=args if isinstance(args, str) else json.dumps(args),
                    )
                    call.usage.completion_tokens += 1
            finally:
                call.ending.upstream_closed = True


async def _silence(ignore_cancel: bool) -> None:
    """A provider gone silent; one that ignores cancels stays so through them."""
    while True:
        try:
            await asyncio.Event().wait()
        except (asyncio.CancelledError, RunCancelled):
            if not ignore_cancel:
                raise


def _answer(opts: FakeOptions, script: FakeStep | None, call: ProviderCall) -> str:
    if script is not None and script.text is not None:
        return script.text
    if script is not None and script.tool_calls:
        return ""
    return opts.text if opts.text is not None else _echo(call)


def _echo(call: ProviderCall) -> str:
    """The results of the tool calls the model just made, else the last user message."""
    results: list[str] = []
    for message in reversed(call.messages):
        if message.role != "tool":
            break
        results.insert(0, message.content)
    if results:
        return "\n".join(results)
    for message in reversed(call.messages):
        if message.role == "user":
            return message.content
    return ""


def _failure(kind: FailKind, sent: int) -> ProviderError:
    cls, status = _FAILURES[kind]
    return cls(
        f"fake provider failure: {kind}",
        ErrorDetail(status=status, vendor_message=f"scripted {kind} after {sent} chunks"),
    )
