"""Run records and their outcomes: the vocabulary the registry stores."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from rayruns.actors.frames import (
    ErrorFrame,
    LoggedFrame,
    StopReason,
    StopReasonFrame,
    UsageFrame,
)
from rayruns.providers.errors import ErrorType

RunStatus = Literal["created", "running", "completed", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

STATUS_OF_STOP: dict[StopReason, RunStatus] = {
    "end_turn": "completed",
    "max_steps": "completed",
    "requires_approval": "completed",
    "error": "failed",
    "llm_api_error": "failed",
    "cancelled": "cancelled",
}


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    step_count: int = 0


class RunError(BaseModel):
    error_type: ErrorType
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


class Outcome(BaseModel):
    """How a run ended: decided once, streamed as terminal frames, recorded once."""

    stop_reason: StopReason
    usage: Usage
    error: RunError | None = None

    @property
    def status(self) -> RunStatus:
        return STATUS_OF_STOP[self.stop_reason]


class Run(BaseModel):
    """A run's record, as `GET /v1/runs/{id}` returns it."""

    id: str
    status: RunStatus
    stop_reason: StopReason | None = None
    model: str
    conversation_id: str | None = None
    background: bool = False
    created_at: datetime
    completed_at: datetime | None = None
    usage: Usage | None = None
    error: RunError | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tenant: str | None = None  # the API key's tenant that made it; None: untenanted

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def outcome(self) -> Outcome:
        assert self.stop_reason is not None, "only a terminal run has an outcome"
        return Outcome(stop_reason=self.stop_reason, usage=self.usage or Usage(), error=self.error)


def utcnow() -> datetime:
    return datetime.now(UTC)


def terminal_frames(run_id: str, after_seq: int, outcome: Outcome) -> list[LoggedFrame]:
    """The frames that end every run: error (if failed), stop_reason, usage_statistics."""
    frames: list[LoggedFrame] = []
    seq = after_seq
    if outcome.error is not None:
        seq += 1
        err = outcome.error
        frames.append(
            LoggedFrame(
                seq,
                "error",
                ErrorFrame(
                    run_id=run_id,
                    seq_id=seq,
                    error_type=err.error_type,
                    message=err.message,
                    detail=err.detail,
                ).model_dump_json(),
            )
        )
    seq += 1
    frames.append(
        LoggedFrame(
            seq,
            "stop_reason",
            StopReasonFrame(
                run_id=run_id, seq_id=seq, stop_reason=outcome.stop_reason
            ).model_dump_json(),
        )
    )
    seq += 1
    frames.append(
        LoggedFrame(
            seq,
            "usage_statistics",
            UsageFrame(run_id=run_id, seq_id=seq, **outcome.usage.model_dump()).model_dump_json(),
        )
    )
    return frames
