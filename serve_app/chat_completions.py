"""`POST /v1/chat/completions`: the OpenAI Chat Completions surface over the same runs.

A completion is a run: recorded, cancellable and resumable like any other (`X-Run-Id`). Its
frames are translated into Chat Completions objects here; errors take OpenAI's error shape.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from rayruns.actors.conversation import InvalidContinuation
from rayruns.actors.frames import CONTENT_TYPES, LoggedFrame
from rayruns.actors.limits import LiveRunLimit
from rayruns.actors.records import Run
from rayruns.actors.registry import ConversationBusy
from rayruns.actors.spec import (
    ID_MAX,
    INVALID_PROVIDER_OPTIONS,
    MESSAGES_OR_APPROVALS,
    InvalidRun,
    RunSpec,
    describe,
)
from rayruns.actors.tool_requests import Approval, MultitaskStrategy, RequestTool
from rayruns.providers.base import (
    TOOL_CALL_ID_MAX,
    JsonInt,
    MessageToolCall,
    PositiveCount,
    ToolChoice,
    integral,
    one_shape_per_role,
)
from rayruns.providers.catalog import option_meanings, split_model
from rayruns.providers.errors import UnknownProvider
from rayruns.serve_app.auth import CallerDep
from rayruns.serve_app.errors import busy_message, openai_error, too_many_runs
from rayruns.serve_app.openapi import CHUNK_EVENTS, answers
from rayruns.serve_app.runs import runtime
from rayruns.serve_app.sse import FrameStream, JsonEventEncoder

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

# error_type → (HTTP status, OpenAI error type)
_ERRORS: dict[str, tuple[int, str]] = {
    "llm_rate_limit": (429, "rate_limit_error"),
    "llm_authentication": (401, "authentication_error"),
    "llm_bad_request": (400, "invalid_request_error"),
    "llm_timeout": (504, "timeout"),
    "llm_error": (502, "api_error"),
    "stream_incomplete": (502, "api_error"),
    "run_lost": (502, "api_error"),
    "internal_error": (500, "server_error"),
}


class TextPart(BaseModel):
    """A content part; only text parts are supported."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=one_shape_per_role)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=TOOL_CALL_ID_MAX)

    def to_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text(),
        }
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The Chat Completions body; rayruns fields arrive through the client's `extra_body`."""

    # Strict: `"stream": 0` or `"background": "yes"` is refused, as the schema says.
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"anyOf": MESSAGES_OR_APPROVALS}
    )

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(max_length=10_000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: PositiveCount | None = None
    max_completion_tokens: PositiveCount | None = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    n: Annotated[Literal[1], BeforeValidator(integral)] = 1
    user: str | None = None
    # rayruns
    provider_options: dict[str, Any] = Field(default_factory=dict)
    background: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    conversation_id: str | None = Field(default=None, min_length=1, max_length=ID_MAX)
    tools: list[RequestTool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    approvals: list[Approval] = Field(default_factory=list)
    multitask_strategy: MultitaskStrategy = "reject"
    max_steps: JsonInt = Field(default=10, ge=1, le=1000)

    def to_spec(self) -> RunSpec:
        """The run this completion is; raises ValidationError (also for the model, options)."""
        common = {
            "temperature": self.temperature,
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "top_p": self.top_p,
            "stop": self.stop,
        }
        # An option also in `provider_options`, in any of the vendor's spellings, is taken
        # from there: the vendor-specific request is the more specific one.
        overridden = _option_meanings(self.model, self.provider_options)
        options = {
            k: v for k, v in common.items() if v is not None and k not in overridden
        } | self.provider_options
        return RunSpec.model_validate(
            {
                "model": self.model,
                "messages": [m.to_message() for m in self.messages],
                "provider_options": options,
                "background": self.background,
                "metadata": self.metadata,
                "conversation_id": self.conversation_id,
                "tools": self.tools,
                "tool_choice": self.tool_choice,
                "parallel_tool_calls": self.parallel_tool_calls,
                "approvals": self.approvals,
                "multitask_strategy": self.multitask_strategy,
                "max_steps": self.max_steps,
            }
        )


def _option_meanings(model: str, options: dict[str, Any]) -> set[str]:
    try:
        provider, _ = split_model(model)
    except UnknownProvider:
        return set(options)  # the run spec refuses the model with its own message
    return option_meanings(provider, options)


class ChunkTranslator:
    """Frames → `chat.completion.chunk` objects, in the order the wire format wants."""

    def __init__(self, run: Run, include_usage: bool) -> None:
        self._base = {
            "id": completion_id(run.id),
            "object": "chat.completion.chunk",
            "created": int(run.created_at.timestamp()),
            "model": run.model,
        }
        self._include_usage = include_usage
        self._started = False
        self._tool_calls = 0

    def __call__(self, frame: LoggedFrame) -> Iterator[dict[str, Any]]:
        kind = frame.message_type
        # Server tools' calls and returns stay inside the run; the calls the client must answer
        # are its `tool_calls`.
        if kind in ("tool_call_message", "tool_return_message"):
            return
        data = json.loads(frame.data)
        if kind in CONTENT_TYPES and not self._started:
            self._started = True
            yield self._choice({"role": "assistant", "content": ""})
        if kind == "assistant_message":
            yield self._choice({"content": data["content"]})
        elif kind == "reasoning_message":
            yield self._choice({"reasoning_content": data["content"]})
        elif kind == "approval_request_message":
            call = data["tool_call"]
            delta = {"index": self._tool_calls, **openai_tool_call(call)}
            self._tool_calls += 1
            yield self._choice({"tool_calls": [delta]})
        elif kind == "error":
            yield {"error": {"message": data["message"], "type": data["error_type"]}}
        elif kind == "stop_reason":
            reason = finish_reason(data["stop_reason"], self._tool_calls > 0)
            yield self._choice({}, reason)
        elif kind == "usage_statistics" and self._include_usage:
            yield {**self._base, "choices": [], "usage": usage_of(data)}

    def _choice(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self._base, "choices": [choice]}


def openai_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """Our `tool_call` body in Chat Completions' shape."""
    return {
        "id": call["id"],
        "type": "function",
        "function": {"name": call["name"], "arguments": call["arguments"]},
    }


def completion_id(run_id: str) -> str:
    return "chatcmpl-" + run_id.removeprefix("run-")


def finish_reason(stop_reason: str, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if stop_reason == "max_steps" else "stop"


def usage_of(data: dict[str, Any]) -> dict[str, int]:
    return {k: data[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def _failure(frames: list[LoggedFrame], *, before_content: bool) -> dict[str, Any] | None:
    """The run's error frame; with `before_content`, only if no content preceded it."""
    for frame in frames:
        if before_content and frame.message_type in CONTENT_TYPES:
            return None
        if frame.message_type == "error":
            error: dict[str, Any] = json.loads(frame.data)
            return error
    return None


def _error_answer(error: dict[str, Any], run_id: str) -> JSONResponse:
    status, kind = _ERRORS.get(error["error_type"], (502, "api_error"))
    return openai_error(status, error["message"], kind, error["error_type"], {"X-Run-Id": run_id})


OPTIONS_CODE = "invalid_provider_options"  # provider_options refused: 422, not OpenAI's 400


@router.post(
    "/chat/completions",
    response_model=None,
    responses=answers(
        400, 401, 409, 413, 422, 429, 502, 503, 504, sse=CHUNK_EVENTS, openai_errors=True
    ),
)
async def chat_completions(request: Request, caller: CallerDep) -> Response:
    rt = runtime(request)
    try:
        chat = ChatRequest.model_validate_json(await request.body())
        spec = chat.to_spec()
    except ValidationError as exc:
        if any(err["type"] == INVALID_PROVIDER_OPTIONS for err in exc.errors()):
            return openai_error(422, describe(exc), "invalid_request_error", OPTIONS_CODE)
        return openai_error(400, describe(exc), "invalid_request_error", "invalid_request")
    except ValueError as exc:
        return openai_error(400, str(exc), "invalid_request_error", "invalid_request")
    try:
        run, actor = await rt.client.create_run_or_cancel(spec, not chat.background, caller.tenant)
    except ConversationBusy as exc:
        return openai_error(409, busy_message(exc), "invalid_request_error", "conversation_busy")
    except LiveRunLimit as exc:
        return too_many_runs(request, exc)
    except InvalidContinuation as exc:
        return openai_error(409, str(exc), "invalid_request_error", "conversation_conflict")
    except InvalidRun as exc:
        return openai_error(400, str(exc), "invalid_request_error", "invalid_request")

    frames = rt.client.follow(run.id, 0, actor)

    def on_finish(completed: bool) -> None:
        if not completed and not chat.background:
            log.info("run %s: its client went away; cancelling it", run.id)
            rt.client.cancel_soon(run.id)  # the client went away: a foreground run ends

    # Headers wait for the first content (or the end): a run that fails before it answers
    # with an error status, as OpenAI does.
    seen: list[LoggedFrame] = []
    finished = False
    try:
        async for batch in frames:
            seen += batch
            if any(f.message_type in CONTENT_TYPES for f in batch) and chat.stream:
                break
        else:
            finished = True
    except BaseException:
        on_finish(False)
        raise
    failure = _failure(seen, before_content=chat.stream)
    if failure is not None:
        on_finish(True)
        return _error_answer(failure, run.id)
    headers = {"X-Run-Id": run.id}
    if not chat.stream:
        on_finish(finished)
        return JSONResponse(_completion(run, seen), headers=headers)
    include_usage = chat.stream_options is not None and chat.stream_options.include_usage
    return FrameStream(
        frames,
        JsonEventEncoder(ChunkTranslator(run, include_usage)),
        headers,
        ping_interval_s=rt.settings.ping_interval_s,
        on_finish=on_finish,
        first=seen,
    )


def _completion(run: Run, frames: list[LoggedFrame]) -> dict[str, Any]:
    content: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    stop_reason = "end_turn"
    usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for frame in frames:
        data = json.loads(frame.data)
        match frame.message_type:
            case "assistant_message":
                content.append(data["content"])
            case "reasoning_message":
                reasoning.append(data["content"])
            case "approval_request_message":
                call = data["tool_call"]
                tool_calls.append(openai_tool_call(call))
            case "stop_reason":
                stop_reason = data["stop_reason"]
            case "usage_statistics":
                usage = usage_of(data)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason(stop_reason, bool(tool_calls)),
    }
    return {
        "id": completion_id(run.id),
        "object": "chat.completion",
        "created": int(run.created_at.timestamp()),
        "model": run.model,
        "choices": [choice],
        "usage": usage,
    }
