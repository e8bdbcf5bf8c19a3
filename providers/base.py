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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from rayruns.providers.settings import ProviderSettings

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One input message."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    role: Role
    content: str = Field(max_length=4 * 1024 * 1024)


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
