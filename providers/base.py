"""The provider interface: one streaming verb over one vocabulary of events.

A provider turns a `ProviderCall` into an async generator of `ProviderEvent`s. The run actor
drives that generator and, on cancel, throws `RunCancelled` into it (when it is parked at a
`yield`) or cancels its pending `__anext__` (when it awaits the network). Either way the
generator's own handlers and `finally` run, and `StreamGuard` records how it ended.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from rayruns.providers.settings import ProviderSettings

Role = Literal["system", "user", "assistant", "tool"]

# What vendors accept as a function name (OpenAI's rule, the strictest of the three).
TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TOOL_CALL_ID_MAX = 256


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    arguments: str = Field(default="{}", max_length=1024 * 1024, description="a JSON string")


class MessageToolCall(BaseModel):
    """A tool call an assistant message made, in OpenAI's shape."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(min_length=1, max_length=TOOL_CALL_ID_MAX)
    type: Literal["function"] = "function"
    function: FunctionCall


def one_shape_per_role(schema: dict[str, Any]) -> None:
    """A message's JSON schema as one object shape per role, as its validator decides: only an
    assistant message has `tool_calls`; a tool message, and only it, has `tool_call_id`; `content`
    and `tool_calls` may be null."""
    props = schema.pop("properties")
    required = set(schema.pop("required", ())) - {"tool_call_id"}
    roles = props.pop("role")["enum"]
    calls = props.pop("tool_calls")
    calls = next((s for s in calls.get("anyOf", [calls]) if s.get("type") == "array"), calls)
    call_id = props.pop("tool_call_id")
    call_id = next(s for s in call_id.get("anyOf", [call_id]) if s.get("type") == "string")
    content = props.pop("content")
    if not any(s.get("type") == "null" for s in content.get("anyOf", [])):
        content = {"anyOf": [content, {"type": "null"}]}
    no_calls = {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]}

    def shape(role: list[str], **fields: Any) -> dict[str, Any]:
        properties = {"role": {"enum": role}, "content": content, **props, **fields}
        need = sorted(required | ({"tool_call_id"} if role == ["tool"] else set()))
        return {"type": "object", "properties": properties, "required": need}

    others = [r for r in roles if r not in ("assistant", "tool")]
    schema["oneOf"] = [
        shape(others, tool_calls=no_calls, tool_call_id={"type": "null"}),
        shape(
            ["assistant"],
            tool_calls={"anyOf": [calls, {"type": "null"}]},
            tool_call_id={"type": "null"},
        ),
        shape(["tool"], tool_calls=no_calls, tool_call_id=call_id),
    ]
    if schema.get("additionalProperties") is False:
        for variant in schema["oneOf"]:
            variant["additionalProperties"] = False
        del schema["additionalProperties"]


class Message(BaseModel):
    """One message of a conversation, in OpenAI's shape: an assistant message may carry
    `tool_calls`; a `tool` message answers one of them by `tool_call_id`."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, json_schema_extra=one_shape_per_role
    )

    role: Role
    content: str = Field(max_length=4 * 1024 * 1024)
    tool_calls: list[MessageToolCall] = Field(default_factory=list, max_length=128)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=TOOL_CALL_ID_MAX)

    @field_validator("content", mode="before")
    @classmethod
    def _null_content(cls, value: object) -> object:
        # An assistant message that only calls tools has `content: null` in OpenAI's shape.
        return "" if value is None else value

    @field_validator("tool_calls", mode="before")
    @classmethod
    def _null_calls(cls, value: object) -> object:
        return [] if value is None else value

    @model_validator(mode="after")
    def _roles(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message may have tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message needs tool_call_id, and only a tool message has one")
        return self


class ToolDefinition(BaseModel):
    """A function the model may call: OpenAI's `function` object (JSON-schema parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = Field(default="", max_length=16 * 1024)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # OpenAI's structured-outputs flag; other vendors ignore it

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type", "object") != "object":
            raise ValueError("parameters must be a JSON schema of type object")
        return value


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str = Field(pattern=TOOL_NAME_PATTERN)


class NamedToolChoice(BaseModel):
    """`{"type": "function", "function": {"name": ...}}`: the model must call this tool."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class RunCancelled(Exception):
    """Thrown into a provider stream when its run is cancelled (never an outside cancel)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta:
    """A piece of assistant text. Deltas with the same `block` form one message."""

    text: str
    block: int = 0
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningDelta:
    """A piece of the model's reasoning ("thinking")."""

    text: str
    block: int = 0
    kind: Literal["reasoning"] = "reasoning"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """A whole tool call: the name and its JSON arguments, assembled from the vendor's deltas."""

    id: str
    name: str
    arguments: str
    kind: Literal["tool_call"] = "tool_call"


ProviderEvent = TextDelta | ReasoningDelta | ToolCall


@dataclass(slots=True)
class TokenUsage:
    """Tokens of one provider call, updated as the stream goes, so a cancel keeps what arrived."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


StreamOutcome = Literal["open", "completed", "cancelled", "failed", "closed"]


@dataclass(slots=True)
class StreamEnding:
    """How a provider stream ended, as the generator itself saw it."""

    outcome: StreamOutcome = "open"
    cancelled_at: Literal["yield", "await"] | None = None
    upstream_closed: bool = False
    error: str | None = None


@dataclass(slots=True, kw_only=True)
class ProviderCall:
    """Everything one provider call needs, plus what it reports back."""

    run_id: str
    model: str
    messages: list[Message]
    options: BaseModel
    step: int
    cancelled: asyncio.Event
    tools: list[ToolDefinition] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    ending: StreamEnding = field(default_factory=StreamEnding)


class StreamGuard:
    """Records in `call.ending` how the generator body it wraps ended. Never suppresses."""

    def __init__(self, call: ProviderCall) -> None:
        self._ending = call.ending
        self._cancelled = call.cancelled

    def __enter__(self) -> StreamEnding:
        return self._ending

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ending = self._ending
        if exc is None:
            ending.outcome = "completed"
        elif isinstance(exc, RunCancelled):
            ending.outcome, ending.cancelled_at = "cancelled", "yield"
        elif isinstance(exc, asyncio.CancelledError) and self._cancelled.is_set():
            ending.outcome, ending.cancelled_at = "cancelled", "await"
        elif isinstance(exc, GeneratorExit | asyncio.CancelledError):
            ending.outcome = "closed"
        else:
            ending.outcome, ending.error = "failed", type(exc).__name__


def integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Request models are strict (no "1" for 1, no 0 for false), as their JSON schema says; JSON
# Schema counts 3.0 as an integer, so integral floats are integers here too.
JsonInt = Annotated[int, BeforeValidator(integral)]
Count = Annotated[int, Field(ge=0), BeforeValidator(integral)]
PositiveCount = Annotated[int, Field(ge=1), BeforeValidator(integral)]


class CommonOptions(BaseModel):
    """Options every provider maps onto its API."""

    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: PositiveCount | None = None
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: list[str] | str | None = None


class Provider(ABC):
    """One vendor. `stream` is an async generator; the SDK is imported inside it, lazily."""

    name: ClassVar[str]
    options_model: ClassVar[type[BaseModel]] = CommonOptions

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> BaseModel:
        return cls.options_model.model_validate(options)

    @abstractmethod
    def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderEvent, None]:
        """Open the vendor stream for `call` and yield its events; close it in `finally`."""

    async def aclose(self) -> None:  # noqa: B027 - a default for providers that keep nothing
        """Release what the provider keeps between calls (an SDK client and its connections)."""
