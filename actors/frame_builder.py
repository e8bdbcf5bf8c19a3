"""Turns a run's provider events into logged frames: message ids, steps, token or whole messages."""

from __future__ import annotations

import uuid
from typing import Literal, assert_never

from rayruns.actors.frame_log import FrameLog
from rayruns.actors.frames import (
    ApprovalRequestMessage,
    AssistantMessage,
    ReasoningMessage,
    ToolCallBody,
    ToolCallMessage,
    ToolReturnMessage,
)
from rayruns.providers.base import ProviderEvent, ReasoningDelta, TextDelta, ToolCall


def new_message_id() -> str:
    return f"msg-{uuid.uuid4().hex}"


class FrameBuilder:
    """With `stream_tokens`, one frame per delta; otherwise one frame per finished message."""

    def __init__(self, run_id: str, log: FrameLog, *, stream_tokens: bool) -> None:
        self._run_id = run_id
        self._log = log
        self._stream_tokens = stream_tokens
        self._open: tuple[str, int] | None = None  # (kind, block) of the message being streamed
        self._message_id = ""
        self._pending: list[str] = []
        self._step = 0
        self.tool_calls: list[ToolCall] = []

    def begin_step(self, step: int) -> None:
        self._step = step
        self.tool_calls = []

    def add(self, event: ProviderEvent) -> None:
        if isinstance(event, TextDelta | ReasoningDelta):
            self._delta(event)
        elif isinstance(event, ToolCall):
            self.end_message()
            self.tool_calls.append(event)
            self._log_tool_frame(ToolCallMessage, event)
        else:
            assert_never(event)

    def request_approvals(self, calls: list[ToolCall]) -> None:
        """Calls that need the client go back to it for a decision, one frame each."""
        for call in calls:
            self._log_tool_frame(ApprovalRequestMessage, call)

    def tool_return(
        self, tool_call_id: str, status: Literal["success", "error"], content: str
    ) -> None:
        self.end_message()
        frame = ToolReturnMessage(
            run_id=self._run_id,
            seq_id=self._log.next_seq,
            id=new_message_id(),
            step=self._step,
            tool_call_id=tool_call_id,
            status=status,
            content=content,
        )
        self._log.append(frame.message_type, frame.model_dump_json())

    def _log_tool_frame(
        self, cls: type[ToolCallMessage | ApprovalRequestMessage], call: ToolCall
    ) -> None:
        frame = cls(
            run_id=self._run_id,
            seq_id=self._log.next_seq,
            id=new_message_id(),
            step=self._step,
            tool_call=ToolCallBody(id=call.id, name=call.name, arguments=call.arguments),
        )
        self._log.append(frame.message_type, frame.model_dump_json())

    def end_message(self) -> None:
        """Close the message being streamed; without `stream_tokens`, log it whole now."""
        if self._open is not None and self._pending:
            self._emit(self._open[0], "".join(self._pending))
        self._open = None
        self._pending = []

    def _delta(self, event: TextDelta | ReasoningDelta) -> None:
        key = (event.kind, event.block)
        if key != self._open:
            self.end_message()
            self._open = key
            self._message_id = new_message_id()
        if self._stream_tokens:
            self._emit(event.kind, event.text)
        else:
            self._pending.append(event.text)

    def _emit(self, kind: str, content: str) -> None:
        cls = AssistantMessage if kind == "text" else ReasoningMessage
        frame = cls(
            run_id=self._run_id,
            seq_id=self._log.next_seq,
            id=self._message_id,
            step=self._step,
            content=content,
        )
        self._log.append(frame.message_type, frame.model_dump_json())
