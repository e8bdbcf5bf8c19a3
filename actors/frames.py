"""Frames: what a run logs and streams. One tagged union; each logged frame has a `seq_id`.

Frames are serialised to JSON once, when logged; readers pass the JSON on untouched.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

ContentType = Literal[
    "reasoning_message",
    "assistant_message",
    "tool_call_message",
    "tool_return_message",
    "approval_request_message",
]
CONTENT_TYPES: frozenset[str] = frozenset(get_args(ContentType))

StopReason = Literal[
    "end_turn",
    "max_steps",
    "requires_approval",
    "error",
    "llm_api_error",
    "cancelled",
]


class LoggedFrame(NamedTuple):
    """One entry of a run's log: `data` is the frame's JSON, `seq_id` its place in the log."""

    seq_id: int
    message_type: str
    data: str


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    seq_id: int


class _Message(_Frame):
    id: str
    step: int


class ReasoningMessage(_Message):
    message_type: Literal["reasoning_message"] = "reasoning_message"
    content: str


class AssistantMessage(_Message):
    message_type: Literal["assistant_message"] = "assistant_message"
    content: str


class ToolCallBody(BaseModel):
    id: str
    name: str
    arguments: str


class ToolCallMessage(_Message):
    message_type: Literal["tool_call_message"] = "tool_call_message"
    tool_call: ToolCallBody


class ToolReturnMessage(_Message):
    message_type: Literal["tool_return_message"] = "tool_return_message"
    tool_call_id: str
    status: Literal["success", "error"]
    content: str


class ApprovalRequestMessage(_Message):
    message_type: Literal["approval_request_message"] = "approval_request_message"
    tool_call: ToolCallBody


class ErrorFrame(_Frame):
    message_type: Literal["error"] = "error"
    error_type: str
    message: str
    detail: dict[str, Any] = Field(default_factory=dict)


class StopReasonFrame(_Frame):
    message_type: Literal["stop_reason"] = "stop_reason"
    stop_reason: StopReason


class UsageFrame(_Frame):
    message_type: Literal["usage_statistics"] = "usage_statistics"
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    step_count: int


Frame = Annotated[
    ReasoningMessage
    | AssistantMessage
    | ToolCallMessage
    | ToolReturnMessage
    | ApprovalRequestMessage
    | ErrorFrame
    | StopReasonFrame
    | UsageFrame,
    Field(discriminator="message_type"),
]

FRAME_ADAPTER: TypeAdapter[Frame] = TypeAdapter(Frame)


def parse_frame(logged: LoggedFrame) -> Frame:
    return FRAME_ADAPTER.validate_json(logged.data)
