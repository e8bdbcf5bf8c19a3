"""Server tools and the resolution of pending calls, without Ray."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest

from rayruns.actors.conversation import (
    USER_MOVED_ON,
    InvalidContinuation,
    PendingCall,
    resolve,
)
from rayruns.actors.server_tools import ToolCatalog, ToolConfigError, execute, tool_from_function
from rayruns.actors.tool_requests import Approval
from rayruns.providers.base import Message, RunCancelled


def test_schema_from_hints_and_docstring() -> None:
    catalog = ToolCatalog.load(["tests.agent_tools"])
    assert "_private_helper" not in catalog.tools and "add" in catalog.tools
    add = catalog.tools["add"].definition
    assert add.description == "Add two integers."
    assert add.parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "description": "the first addend"},
            "b": {"type": "integer", "description": "the second addend"},
        },
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    multiply = catalog.tools["multiply"].definition.parameters["properties"]
    assert multiply["y"] == {"type": "number", "description": "the multiplier"}


def test_an_explicit_list_and_bad_modules() -> None:
    module = types.ModuleType("listed_tools")

    def shown(n: int = 3) -> int:
        return n

    def hidden() -> None:
        return None

    module.shown, module.hidden, module.RAYRUNS_TOOLS = shown, hidden, [shown]  # type: ignore[attr-defined]
    sys.modules["listed_tools"] = module
    try:
        assert list(ToolCatalog.load(["listed_tools"]).tools) == ["shown"]
    finally:
        del sys.modules["listed_tools"]
    with pytest.raises(ToolConfigError, match="cannot import 'no.such.module'"):
        ToolCatalog.load(["no.such.module"])

    def star(*args: int) -> None:
        return None

    with pytest.raises(ToolConfigError, match="'args' cannot be named"):
        tool_from_function(star)


async def test_execute_outcomes() -> None:
    tools = ToolCatalog.load(["tests.agent_tools"]).tools
    never = asyncio.Event()
    result, abandoned = await execute(tools["add"], '{"a": 1, "b": 2}', 5, never)
    assert (result.status, result.content, abandoned) == ("success", "3", False)
    result, _ = await execute(tools["add"], '{"a": 1}', 5, never)
    assert result.status == "error" and "b: Field required" in result.content
    result, _ = await execute(tools["add"], '{"a": 1, "b": 2, "c": 3}', 5, never)
    assert result.status == "error" and "c: Extra inputs" in result.content
    result, _ = await execute(tools["explode"], '{"reason": "x"}', 5, never)
    assert result.content == "explode failed: RuntimeError: x"


async def test_a_cancel_reaches_an_async_tool() -> None:
    async def sleeper() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()
        return "never"

    started, ended = asyncio.Event(), asyncio.Event()
    cancelled = asyncio.Event()
    task = asyncio.create_task(execute(tool_from_function(sleeper), "{}", 60, cancelled))
    await started.wait()
    cancelled.set()
    with pytest.raises(RunCancelled):
        await task
    assert ended.is_set()


PENDING = [
    PendingCall(id="s1", name="add", arguments="{}", server=True),
    PendingCall(id="c1", name="lookup", arguments="{}", server=False),
]


def test_resolve_each_kind_of_decision() -> None:
    result = Message(role="tool", tool_call_id="c1", content="found")
    after = Message(role="user", content="and then?")
    got = resolve(PENDING, [Approval(tool_call_id="s1", approve=True)], [result, after])
    assert [(d.call.id, d.action, d.content) for d in got.decisions] == [
        ("s1", "run", ""),
        ("c1", "result", "found"),
    ]
    assert got.messages == [after]
    denied = resolve(PENDING, [Approval(tool_call_id="s1", approve=False, reason="no")], [after])
    assert [(d.action, d.content) for d in denied.decisions] == [
        ("deny", "denied: no"),
        ("deny", USER_MOVED_ON),
    ]


@pytest.mark.parametrize(
    ("approvals", "messages", "needle"),
    [
        ([Approval(tool_call_id="x", approve=True)], [], "no pending tool call 'x'"),
        ([], [Message(role="tool", tool_call_id="s1", content="4")], "approve or deny it"),
        ([Approval(tool_call_id="s1", approve=True)], [], "client tools): 'c1'"),
        (
            [Approval(tool_call_id="s1", approve=True), Approval(tool_call_id="c1", approve=True)],
            [],
            "'c1' (client tool 'lookup': send a tool message)",
        ),
        (
            [Approval(tool_call_id="s1", approve=True), Approval(tool_call_id="c1", approve=False)],
            [Message(role="tool", tool_call_id="c1", content="r")],
            "denied and has a result",
        ),
    ],
)
def test_resolve_refuses(approvals: list[Approval], messages: list[Message], needle: str) -> None:
    with pytest.raises(InvalidContinuation) as info:
        resolve(PENDING, approvals, messages)
    assert needle in str(info.value)
