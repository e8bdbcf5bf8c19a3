"""The agent loop over HTTP: server tools, approvals, conversations, cancels inside the loop.

The run actors load `tests.agent_tools` (see conftest: `RAYRUNS_TOOLS`, a 3 s tool timeout).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.conftest import assert_well_formed, collect, frames, open_sse, wait_terminal


def conv() -> str:
    return f"conv-{uuid.uuid4().hex[:12]}"


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def server(*names: str, approval: bool = False) -> list[dict[str, Any]]:
    return [{"type": "server", "name": n, "requires_approval": approval} for n in names]


def run_body(
    text: str | None, steps: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    options = kw.pop("provider_options", {})
    if steps is not None:
        options["steps"] = steps
    messages = [] if text is None else [{"role": "user", "content": text}]
    return {"messages": messages, "provider_options": options, **kw}


async def run_frames(http: httpx.AsyncClient, request: dict[str, Any]) -> list[dict[str, Any]]:
    events = await collect(http, "POST", "/v1/runs", json=request)
    assert_well_formed(events)
    return frames(events)


def kinds(got: list[dict[str, Any]]) -> list[str]:
    return [f["message_type"] for f in got]


def returns(got: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(f["status"], f["content"]) for f in got if f["message_type"] == "tool_return_message"]


def answer(got: list[dict[str, Any]]) -> str:
    return "".join(f["content"] for f in got if f["message_type"] == "assistant_message")


async def history(http: httpx.AsyncClient, conversation: str) -> dict[str, Any]:
    r = await http.get(f"/v1/conversations/{conversation}/messages")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


class Signals:
    """A local socket the tools in run actors report to (`started`, `cancelled`, ...): the test
    awaits their words as events."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.port = 0

    async def __aenter__(self) -> Signals:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async for line in reader:
                await self.lines.put(line.decode().strip())
            writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()

    async def next(self) -> str:
        async with asyncio.timeout(30):
            return await self.lines.get()


@pytest.fixture
async def signals() -> AsyncIterator[Signals]:
    async with Signals() as s:
        yield s


async def test_three_steps_with_two_server_tools(http: httpx.AsyncClient) -> None:
    steps = [
        {"tool_calls": [call("add", a=2, b=3)]},
        {"tool_calls": [call("multiply", x=5, y=4)]},
        {},
    ]
    got = await run_frames(http, run_body("compute", steps, tools=server("add", "multiply")))
    assert kinds(got) == [
        "tool_call_message",
        "tool_return_message",
        "tool_call_message",
        "tool_return_message",
        "assistant_message",
        "stop_reason",
        "usage_statistics",
    ]
    assert [f["step"] for f in got[:5]] == [1, 1, 2, 2, 3]
    assert got[1]["tool_call_id"] == got[0]["tool_call"]["id"]
    assert returns(got) == [("success", "5"), ("success", "20.0")]
    assert answer(got) == "20.0"  # the fake echoes the results it was sent back
    assert got[-2]["stop_reason"] == "end_turn"
    usage = got[-1]
    assert usage["step_count"] == 3
    # Each step's prompt holds the whole history so far, so the sum grows with every step.
    assert usage["prompt_tokens"] == 1 + 2 + 3 and usage["completion_tokens"] == 1 + 1 + 1


async def test_a_failing_tool_is_an_error_return_the_model_sees(http: httpx.AsyncClient) -> None:
    steps = [{"tool_calls": [call("explode", reason="boom")]}, {}]
    got = await run_frames(http, run_body("go", steps, tools=server("explode")))
    ((status, content),) = returns(got)
    assert status == "error" and content == "explode failed: RuntimeError: boom"
    assert answer(got) == content and got[-2]["stop_reason"] == "end_turn"


async def test_bad_arguments_are_an_error_return(http: httpx.AsyncClient) -> None:
    steps = [{"tool_calls": [call("add", a="two", b=3)]}, {}]
    got = await run_frames(http, run_body("go", steps, tools=server("add")))
    ((status, content),) = returns(got)
    assert status == "error" and content.startswith("invalid arguments for add: a:")


async def test_a_tool_past_its_timeout(http: httpx.AsyncClient, signals: Signals) -> None:
    steps = [{"tool_calls": [call("wait_forever", port=signals.port)]}, {}]
    got = await run_frames(http, run_body("go", steps, tools=server("wait_forever")))
    assert returns(got) == [("error", "wait_forever timed out after 3 s")]
    # The async tool was cancelled, not left running.
    assert [await signals.next(), await signals.next()] == ["started", "cancelled"]
    assert got[-2]["stop_reason"] == "end_turn"


async def test_a_tool_that_kills_its_process(http: httpx.AsyncClient, registry: Any) -> None:
    conversation = conv()
    request = run_body(
        "go",
        [{"tool_calls": [call("kill_process")]}],
        tools=server("kill_process"),
        conversation_id=conversation,
    )
    got = await run_frames(http, request)
    assert got[-3]["message_type"] == "error" and got[-3]["error_type"] == "run_lost"
    run = await wait_terminal(registry, got[0]["run_id"])
    assert run.status == "failed"
    # The conversation takes the next run at once; the lost run left no messages behind.
    after = await run_frames(http, run_body("still here", conversation_id=conversation))
    assert answer(after) == "still here"
    assert [m["role"] for m in (await history(http, conversation))["messages"]] == [
        "user",
        "assistant",
    ]


async def test_a_conversation_keeps_its_history(http: httpx.AsyncClient) -> None:
    conversation = conv()
    steps = [{"tool_calls": [call("add", a=1, b=1)]}, {"text": "two"}]
    await run_frames(
        http, run_body("one plus one", steps, tools=server("add"), conversation_id=conversation)
    )
    got = await run_frames(http, run_body("thanks", conversation_id=conversation))
    # The second run sent only its new message; its prompt held the whole conversation.
    assert got[-1]["prompt_tokens"] == len(["one", "plus", "one"]) + 1 + 1 + 1
    messages = (await history(http, conversation))["messages"]
    assert [(m["role"], m.get("content")) for m in messages] == [
        ("user", "one plus one"),
        ("assistant", ""),
        ("tool", "2"),
        ("assistant", "two"),
        ("user", "thanks"),
        ("assistant", "thanks"),
    ]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "add",
        "arguments": '{"a": 1, "b": 1}',
    }
    assert messages[2]["tool_call_id"] == messages[1]["tool_calls"][0]["id"]
    assert len({m["run_id"] for m in messages}) == 2


async def approval_wait(http: httpx.AsyncClient, conversation: str) -> tuple[str, str]:
    """A run in `conversation` that stops for approval of `add`: (its run id, the call's id)."""
    request = run_body(
        "add please",
        [{"tool_calls": [call("add", a=2, b=2)]}],
        tools=server("add", approval=True),
        conversation_id=conversation,
    )
    got = await run_frames(http, request)
    assert kinds(got) == [
        "tool_call_message",
        "approval_request_message",
        "stop_reason",
        "usage_statistics",
    ]
    assert got[-2]["stop_reason"] == "requires_approval"
    call_id = got[1]["tool_call"]["id"]
    pending = (await history(http, conversation))["pending_approvals"]
    assert [p["tool_call_id"] for p in pending] == [call_id] and pending[0]["server"] is True
    return got[0]["run_id"], call_id


async def test_approve_runs_the_server_tool(http: httpx.AsyncClient) -> None:
    conversation = conv()
    _, call_id = await approval_wait(http, conversation)
    approvals = [{"tool_call_id": call_id, "approve": True}]
    got = await run_frames(
        http,
        run_body(
            None,
            tools=server("add", approval=True),
            conversation_id=conversation,
            approvals=approvals,
        ),
    )
    assert kinds(got)[:2] == ["tool_return_message", "assistant_message"]
    assert got[0]["tool_call_id"] == call_id and returns(got) == [("success", "4")]
    assert answer(got) == "4" and got[-2]["stop_reason"] == "end_turn"
    assert (await history(http, conversation))["pending_approvals"] == []


async def test_deny_gives_the_model_a_denial(http: httpx.AsyncClient) -> None:
    conversation = conv()
    _, call_id = await approval_wait(http, conversation)
    approvals = [{"tool_call_id": call_id, "approve": False, "reason": "not now"}]
    got = await run_frames(
        http,
        run_body(
            None,
            tools=server("add", approval=True),
            conversation_id=conversation,
            approvals=approvals,
        ),
    )
    assert returns(got) == [("error", "denied: not now")] and answer(got) == "denied: not now"


async def test_a_new_user_message_denies_pending_calls(http: httpx.AsyncClient) -> None:
    conversation = conv()
    await approval_wait(http, conversation)
    got = await run_frames(http, run_body("never mind", conversation_id=conversation))
    assert returns(got) == [("error", "denied: the user sent a new message instead")]
    assert answer(got) == "never mind"
    roles = [m["role"] for m in (await history(http, conversation))["messages"]]
    assert roles == ["user", "assistant", "tool", "user", "assistant"]


@pytest.mark.parametrize(
    ("continuation", "message"),
    [
        (
            {"approvals": [{"tool_call_id": "call-nope", "approve": True}]},
            "no pending tool call 'call-nope'",
        ),
        (
            {"messages": [{"role": "tool", "tool_call_id": "{id}", "content": "4"}]},
            "approve or deny it",
        ),
        ({"messages": [{"role": "assistant", "content": "hm"}]}, "await a decision"),
    ],
)
async def test_continuations_that_do_not_fit_are_refused(
    http: httpx.AsyncClient, continuation: dict[str, Any], message: str
) -> None:
    conversation = conv()
    _, call_id = await approval_wait(http, conversation)
    request = {"conversation_id": conversation, "messages": [], **continuation}
    request = json.loads(json.dumps(request).replace("{id}", call_id))
    r = await http.post("/v1/runs", json=request)
    # A well-formed request that conflicts with the conversation's state.
    assert r.status_code == 409 and message in r.json()["detail"], r.text
    # Nothing changed: the call still awaits its decision.
    assert len((await history(http, conversation))["pending_approvals"]) == 1


async def test_client_tool_round_trip_in_a_conversation(http: httpx.AsyncClient) -> None:
    conversation = conv()
    lookup = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    got = await run_frames(
        http,
        run_body(
            "find it",
            [{"tool_calls": [call("lookup", q="ray")]}],
            tools=[lookup],
            conversation_id=conversation,
        ),
    )
    assert got[-2]["stop_reason"] == "requires_approval"
    call_id = got[1]["tool_call"]["id"]
    (pending,) = (await history(http, conversation))["pending_approvals"]
    assert pending["server"] is False and pending["name"] == "lookup"
    result = {"role": "tool", "tool_call_id": call_id, "content": "found: Ray"}
    got = await run_frames(
        http, {"messages": [result], "tools": [lookup], "conversation_id": conversation}
    )
    assert returns(got) == [("success", "found: Ray")] and answer(got) == "found: Ray"


async def test_cancel_during_an_async_tool(
    http: httpx.AsyncClient, registry: Any, signals: Signals
) -> None:
    conversation = conv()
    request = run_body(
        "wait",
        [{"tool_calls": [call("wait_forever", port=signals.port)]}],
        tools=server("wait_forever"),
        conversation_id=conversation,
    )
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    try:
        assert (await stream.next_frame()).json["message_type"] == "tool_call_message"
        assert await signals.next() == "started"
        run = (await http.post(f"/v1/runs/{stream.run_id}/cancel")).json()
        assert run["status"] == "cancelled"
        await stream.rest()
    finally:
        await cm.__aexit__(None, None, None)
    assert await signals.next() == "cancelled"
    got = frames(stream.seen)
    assert returns(got) == [("error", "cancelled: the run was cancelled before this call finished")]
    # The conversation takes a new run at once, and its history stays valid for the model.
    after = await run_frames(http, run_body("next", conversation_id=conversation))
    assert answer(after) == "next" and after[-2]["stop_reason"] == "end_turn"
    roles = [m["role"] for m in (await history(http, conversation))["messages"]]
    assert roles == ["user", "assistant", "tool", "user", "assistant"]


async def test_cancel_during_a_sync_tool_abandons_it(
    http: httpx.AsyncClient, registry: Any, signals: Signals
) -> None:
    conversation = conv()
    request = run_body(
        "block",
        [{"tool_calls": [call("block", port=signals.port, seconds=600)]}],
        tools=server("block"),
        conversation_id=conversation,
        background=True,
        stream=False,
    )
    task = asyncio.create_task(http.post("/v1/runs", json=request))
    assert await signals.next() == "started"
    (run,) = (await http.get("/v1/runs", params={"conversation_id": conversation})).json()
    cancelled = (await http.post(f"/v1/runs/{run['id']}/cancel")).json()
    assert cancelled["status"] == "cancelled" and (await task).status_code == 200
    assert signals.lines.empty()  # abandoned: still blocking in its thread
    after = await run_frames(http, run_body("next", conversation_id=conversation))
    assert answer(after) == "next"


async def test_cancel_during_an_approval_wait(http: httpx.AsyncClient) -> None:
    conversation = conv()
    run_id, call_id = await approval_wait(http, conversation)
    run = (await http.post(f"/v1/runs/{run_id}/cancel")).json()
    assert run["status"] == "completed" and run["stop_reason"] == "requires_approval"
    view = await history(http, conversation)
    assert view["pending_approvals"] == []
    assert view["messages"][-1] == {
        "run_id": run_id,
        "role": "tool",
        "tool_call_id": call_id,
        "content": "denied: the run awaiting approval was cancelled",
    }
    after = await run_frames(http, run_body("next", conversation_id=conversation))
    assert answer(after) == "next" and returns(after) == []
    late = {
        "conversation_id": conversation,
        "messages": [],
        "approvals": [{"tool_call_id": call_id, "approve": True}],
    }
    assert (await http.post("/v1/runs", json=late)).status_code == 409


async def test_interrupt_cancels_the_active_run(http: httpx.AsyncClient, registry: Any) -> None:
    conversation = conv()
    stream, cm = await open_sse(
        http,
        "POST",
        "/v1/runs",
        json=run_body(
            "hang",
            provider_options={"hang_after": 0},
            conversation_id=conversation,
            background=True,
        ),
    )
    try:
        held = stream.run_id
        busy = await http.post("/v1/runs", json=run_body("x", conversation_id=conversation))
        assert busy.status_code == 409 and busy.json()["run_id"] == held
        got = await run_frames(
            http, run_body("mine now", conversation_id=conversation, multitask_strategy="interrupt")
        )
        assert answer(got) == "mine now"
    finally:
        await cm.__aexit__(None, None, None)
    assert (await wait_terminal(registry, held)).status == "cancelled"


async def test_enqueue_waits_for_the_active_run(http: httpx.AsyncClient, registry: Any) -> None:
    conversation = conv()
    stream, cm = await open_sse(
        http,
        "POST",
        "/v1/runs",
        json=run_body(
            "hang",
            provider_options={"hang_after": 0},
            conversation_id=conversation,
            background=True,
        ),
    )
    try:
        held = stream.run_id
        queued = asyncio.create_task(
            http.post(
                "/v1/runs",
                json=run_body(
                    "after you",
                    conversation_id=conversation,
                    multitask_strategy="enqueue",
                    stream=False,
                ),
            )
        )
        assert (await http.post(f"/v1/runs/{held}/cancel")).json()["status"] == "cancelled"
        r = await queued
    finally:
        await cm.__aexit__(None, None, None)
    assert r.status_code == 200
    second = r.json()["run"]
    first = await wait_terminal(registry, held)
    assert second["status"] == "completed"
    # Enqueued: it started only once the active run had ended.
    assert datetime.fromisoformat(second["created_at"]) >= first.completed_at
    texts = [m.get("content") for m in (await history(http, conversation))["messages"]]
    assert texts == ["hang", "after you", "after you"]


async def test_approvals_without_a_conversation_are_a_conflict(http: httpx.AsyncClient) -> None:
    request = {"messages": [], "approvals": [{"tool_call_id": "c", "approve": True}]}
    r = await http.post("/v1/runs", json=request)
    assert r.status_code == 409 and "without a conversation_id" in r.json()["detail"]


async def test_the_openapi_document_names_the_server_tools(http: httpx.AsyncClient) -> None:
    schemas = (await http.get("/openapi.json")).json()["components"]["schemas"]
    names = schemas["ServerToolRef"]["properties"]["name"]["enum"]
    assert names == ["add", "block", "explode", "kill_process", "multiply", "wait_forever"]
    shapes = {
        tuple(s["properties"]["role"]["enum"]): s["required"] for s in schemas["Message"]["oneOf"]
    }
    assert shapes == {
        ("system", "user"): ["content", "role"],
        ("assistant",): ["content", "role"],
        ("tool",): ["content", "role", "tool_call_id"],
    }


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"tools": server("no_such_tool")}, "no server tool no_such_tool"),
        ({"tools": server("_private_helper")}, "no server tool _private_helper"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.function.name",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "needs tool_call_id"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": "x",
                        "tool_calls": [{"id": "a", "function": {"name": "f"}}],
                    }
                ]
            },
            "only an assistant",
        ),
        ({"messages": []}, "at least one message"),
    ],
)
async def test_bad_tool_requests_are_422(
    http: httpx.AsyncClient, request_body: dict[str, Any], message: str
) -> None:
    request = {"messages": [{"role": "user", "content": "hi"}], **request_body}
    r = await http.post("/v1/runs", json=request)
    assert r.status_code == 422 and message in r.json()["detail"], r.text
