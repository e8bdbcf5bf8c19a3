"""A conversation between runs: its pending tool calls, and how the next run resolves them.

A run that stops for approval leaves its calls pending in the conversation. The next run decides
each one: an approved server tool runs, a denied call gets a denial the model sees, a client
tool's result arrives as a `tool` message. A new user message leaves undecided calls denied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from rayruns.actors.spec import InvalidRun
from rayruns.actors.tool_requests import Approval
from rayruns.providers.base import Message

USER_MOVED_ON = "denied: the user sent a new message instead"
CANCELLED_WAIT = "denied: the run awaiting approval was cancelled"


class PendingCall(BaseModel):
    """A tool call awaiting the client: a client tool's, or a server tool's that needs approval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    arguments: str
    server: bool


class InvalidContinuation(InvalidRun):
    """The run's approvals or tool messages do not fit the conversation's pending calls: a
    conflict with the conversation's state (HTTP 409), not a malformed request."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to one pending call before the run's first step."""

    call: PendingCall
    action: Literal["run", "deny", "result"]
    content: str = ""  # the denial's reason, or the client tool's result


@dataclass(frozen=True, slots=True)
class Continuation:
    decisions: list[Decision]
    messages: list[Message]  # the run's own messages, without the tool results consumed above


@dataclass(frozen=True, slots=True)
class RunContext:
    """What the registry gives a run beside its spec: the conversation so far, and how the run
    continues it."""

    history: list[Message]
    continuation: Continuation

    @classmethod
    def fresh(cls, messages: list[Message]) -> RunContext:
        return cls([], Continuation([], list(messages)))


def denial(reason: str | None) -> str:
    return f"denied: {reason}" if reason else "denied by the user"


def resolve(
    pending: list[PendingCall], approvals: list[Approval], messages: list[Message]
) -> Continuation:
    """Match the run's approvals and `tool` messages to the pending calls; raises
    InvalidContinuation naming what does not fit."""
    by_id = {call.id: call for call in pending}
    decided = {a.tool_call_id: a for a in approvals}
    stray = [a.tool_call_id for a in approvals if a.tool_call_id not in by_id]
    if stray:
        raise InvalidContinuation(f"approvals: no pending tool call {', '.join(map(repr, stray))}")
    if len(decided) != len(approvals):
        raise InvalidContinuation("approvals: one decision per tool call")
    results: dict[str, str] = {}
    rest: list[Message] = []
    for message in messages:
        call = by_id.get(message.tool_call_id or "")
        if call is None:
            rest.append(message)
        elif call.server:
            raise InvalidContinuation(
                f"tool call {call.id!r} is to the server tool {call.name!r}: approve or deny it"
            )
        elif call.id in results:
            raise InvalidContinuation(f"two tool messages answer tool call {call.id!r}")
        else:
            results[call.id] = message.content
    moved_on = any(m.role == "user" for m in rest)
    decisions: list[Decision] = []
    undecided: list[str] = []
    for call in pending:
        approval = decided.get(call.id)
        if approval is not None and not approval.approve:
            if call.id in results:
                raise InvalidContinuation(f"tool call {call.id!r} is denied and has a result")
            decisions.append(Decision(call, "deny", denial(approval.reason)))
        elif call.id in results:
            decisions.append(Decision(call, "result", results[call.id]))
        elif approval is not None and call.server:
            decisions.append(Decision(call, "run"))
        elif moved_on:
            decisions.append(Decision(call, "deny", USER_MOVED_ON))
        elif approval is not None:
            undecided.append(f"{call.id!r} (client tool {call.name!r}: send a tool message)")
        else:
            undecided.append(repr(call.id))
    if undecided:
        raise InvalidContinuation(
            "tool calls await a decision (approvals, or tool messages for client tools): "
            + ", ".join(undecided)
        )
    return Continuation(decisions, rest)


def cancelled_wait(pending: list[PendingCall]) -> list[Message]:
    """The denials a cancel during an approval wait writes into the history."""
    return [Message(role="tool", tool_call_id=c.id, content=CANCELLED_WAIT) for c in pending]
