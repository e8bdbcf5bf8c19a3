"""Every endpoint of the HTTP contract, through httpx against the running Serve app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.conftest import (
    assert_well_formed,
    body,
    collect,
    frames,
    open_sse,
    wait_terminal,
)


async def test_healthz(http: httpx.AsyncClient) -> None:
    r = await http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_stream_a_run(http: httpx.AsyncClient, registry: Any) -> None:
    events = await collect(http, "POST", "/v1/runs", json=body("alpha beta  gamma\n"))
    assert_well_formed(events)
    got = frames(events)
    assert [f["seq_id"] for f in got] == list(range(1, len(got) + 1))
    content = [f for f in got if f["message_type"] == "assistant_message"]
    assert "".join(f["content"] for f in content) == "alpha beta  gamma\n"
    assert len({f["id"] for f in content}) == 1 and all(f["step"] == 1 for f in content)
    assert got[-2]["stop_reason"] == "end_turn"
    usage = got[-1]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["step_count"]) == (3, 3, 1)
    run = await wait_terminal(registry, got[0]["run_id"])
    assert run.status == "completed"


async def test_whole_messages_without_stream_tokens(http: httpx.AsyncClient) -> None:
    request = body("one two three", stream_tokens=False, provider_options={"reasoning": "hm ok"})
    got = frames(await collect(http, "POST", "/v1/runs", json=request))
    assert [(f["message_type"], f.get("content")) for f in got[:2]] == [
        ("reasoning_message", "hm ok"),
        ("assistant_message", "one two three"),
    ]
    assert got[0]["id"] != got[1]["id"]


async def test_char_chunks_and_message_type_filter(http: httpx.AsyncClient) -> None:
    request = body(
        "abc",
        provider_options={"chunk": "char", "reasoning": "think first"},
        include_return_message_types=["reasoning_message"],
    )
    events = await collect(http, "POST", "/v1/runs", json=request)
    assert_well_formed(events, filtered=True)
    kinds = [f["message_type"] for f in frames(events)]
    assert kinds == ["reasoning_message"] * 2 + ["stop_reason", "usage_statistics"]
    # Filtered frames keep their seq ids: the usage frame is the log's 7th frame.
    assert frames(events)[-1]["seq_id"] == 7
    assert frames(events)[-1]["completion_tokens"] == 5


async def test_pings_while_idle(http: httpx.AsyncClient) -> None:
    # A hung provider: nothing but pings can come, so their order is fixed, not raced.
    before_any, cm = await open_sse(
        http, "POST", "/v1/runs", json=body("a b", provider_options={"hang_after": 0})
    )
    try:
        ping = (await before_any.next()).json
        assert ping == {"message_type": "ping", "run_id": before_any.run_id, "seq_id": None}
        assert not before_any.seen[0].id_field_seen
        await http.post(f"/v1/runs/{before_any.run_id}/cancel")
        await before_any.rest()
    finally:
        await cm.__aexit__(None, None, None)
    assert_well_formed(before_any.seen)

    after_one, cm = await open_sse(
        http, "POST", "/v1/runs", json=body("a b", provider_options={"hang_after": 1})
    )
    try:
        first = (await after_one.next()).json
        assert first["message_type"] == "assistant_message"
        ping = (await after_one.next()).json
        assert ping["message_type"] == "ping" and ping["seq_id"] == first["seq_id"]
        await http.post(f"/v1/runs/{after_one.run_id}/cancel")
        await after_one.rest()
    finally:
        await cm.__aexit__(None, None, None)
    assert_well_formed(after_one.seen)

    # Gaps of 0.5 s against a 0.3 s interval: pings, unless they were asked away.
    request = body("slow words here", provider_options={"delay_s": 0.5}, include_pings=False)
    quiet = await collect(http, "POST", "/v1/runs", json=request)
    assert all(e.done or e.json["message_type"] != "ping" for e in quiet)


async def test_failure_is_an_error_event_then_terminal_frames(http: httpx.AsyncClient) -> None:
    request = body("a b c", provider_options={"fail": "rate_limit", "fail_after": 1})
    events = await collect(http, "POST", "/v1/runs", json=request)
    assert_well_formed(events)
    (error,) = [e for e in events if e.type == "error"]
    assert error.json["error_type"] == "llm_rate_limit"
    assert error.json["detail"]["status"] == 429
    assert frames(events)[-2]["stop_reason"] == "llm_api_error"
    run = (await http.get(f"/v1/runs/{error.json['run_id']}")).json()
    assert run["status"] == "failed" and run["error"]["error_type"] == "llm_rate_limit"


async def test_tool_call_asks_for_approval(http: httpx.AsyncClient) -> None:
    tool = {"name": "lookup", "arguments": {"q": "ray"}}
    got = frames(
        await collect(http, "POST", "/v1/runs", json=body(provider_options={"tool_call": tool}))
    )
    kinds = [f["message_type"] for f in got]
    assert kinds == [
        "tool_call_message",
        "approval_request_message",
        "stop_reason",
        "usage_statistics",
    ]
    assert got[0]["tool_call"]["name"] == "lookup"
    assert json.loads(got[0]["tool_call"]["arguments"]) == {"q": "ray"}
    assert got[-2]["stop_reason"] == "requires_approval"

    # A server tool's call goes on to the next step, which max_steps forbids.
    server_tool = {"name": "add", "arguments": {"a": 1, "b": 2}}
    one_step = body(
        provider_options={"tool_call": server_tool},
        tools=[{"type": "server", "name": "add"}],
        max_steps=1,
    )
    got = frames(await collect(http, "POST", "/v1/runs", json=one_step))
    assert [f["message_type"] for f in got[:2]] == ["tool_call_message", "tool_return_message"]
    assert got[-2]["stop_reason"] == "max_steps"
    run = (await http.get(f"/v1/runs/{got[0]['run_id']}")).json()
    assert run["status"] == "completed" and run["stop_reason"] == "max_steps"


async def test_non_streaming(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/runs", json=body("x y", stream=False, metadata={"k": [1, 2]}))
    assert r.status_code == 200
    data = r.json()
    assert r.headers["x-run-id"] == data["run"]["id"]
    assert data["run"]["status"] == "completed" and data["run"]["metadata"] == {"k": [1, 2]}
    assert "".join(m["content"] for m in data["messages"]) == "x y"
    assert data["usage"] == data["run"]["usage"]


async def test_get_and_list_runs(http: httpx.AsyncClient) -> None:
    conversation = "conv-list"
    ids = []
    for text in ("first", "second", "third"):
        r = await http.post("/v1/runs", json=body(text, stream=False, conversation_id=conversation))
        ids.append(r.json()["run"]["id"])
    listed = (await http.get("/v1/runs", params={"conversation_id": conversation})).json()
    assert [r["id"] for r in listed] == ids[::-1]
    limited = (
        await http.get("/v1/runs", params={"conversation_id": conversation, "limit": 2})
    ).json()
    assert [r["id"] for r in limited] == ids[:0:-1]
    completed = (await http.get("/v1/runs", params={"status": "completed", "limit": 1000})).json()
    assert set(ids) <= {r["id"] for r in completed}
    failed = (await http.get("/v1/runs", params={"status": "failed", "limit": 1000})).json()
    assert not set(ids) & {r["id"] for r in failed}
    run = (await http.get(f"/v1/runs/{ids[0]}")).json()
    assert set(run) == {
        "id",
        "status",
        "stop_reason",
        "model",
        "conversation_id",
        "background",
        "created_at",
        "completed_at",
        "usage",
        "error",
        "metadata",
        "tenant",
    }
    assert run["conversation_id"] == conversation and run["model"] == "fake/echo"


async def test_one_active_run_per_conversation(http: httpx.AsyncClient, registry: Any) -> None:
    request = body(provider_options={"hang_after": 0}, conversation_id="conv-busy", background=True)
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    try:
        second = await http.post("/v1/runs", json=body(conversation_id="conv-busy"))
        assert second.status_code == 409
        assert second.json()["run_id"] == stream.run_id
        assert stream.run_id in second.json()["detail"]
        cancelled = await http.post(f"/v1/runs/{stream.run_id}/cancel")
        assert cancelled.json()["status"] == "cancelled"
    finally:
        await cm.__aexit__(None, None, None)
    third = await http.post("/v1/runs", json=body(conversation_id="conv-busy", stream=False))
    assert third.status_code == 200


async def test_cancel_endpoint(http: httpx.AsyncClient) -> None:
    stream, cm = await open_sse(
        http, "POST", "/v1/runs", json=body("a b c d", provider_options={"hang_after": 2})
    )
    try:
        await stream.next_frame()
        r = await http.post(f"/v1/runs/{stream.run_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        rest = await stream.rest()
        assert_well_formed(stream.seen)
        assert frames(rest)[-2]["stop_reason"] == "cancelled"
    finally:
        await cm.__aexit__(None, None, None)
    again = await http.post(f"/v1/runs/{stream.run_id}/cancel")
    assert again.json() == r.json()

    done = await http.post("/v1/runs", json=body(stream=False))
    run_id = done.json()["run"]["id"]
    kept = await http.post(f"/v1/runs/{run_id}/cancel")
    assert kept.status_code == 200 and kept.json()["status"] == "completed"
    assert (await http.post("/v1/runs/run-unknown/cancel")).status_code == 404


async def test_unknown_and_malformed_ids(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/runs/run-0000")).status_code == 404
    assert "run-0000" in (await http.get("/v1/runs/run-0000")).json()["detail"]
    assert (await http.get("/v1/runs/run-0000/stream")).status_code == 404
    long_id = "run-" + "x" * 5000
    for r in (
        await http.get(f"/v1/runs/{long_id}"),
        await http.post(f"/v1/runs/{long_id}/cancel"),
        await http.get(f"/v1/runs/{long_id}/stream"),
    ):
        assert r.status_code == 422 and "detail" in r.json()


MSG = b'{"messages": [{"role": "user", "content": "x"}], '


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        (b"{not json", 400, "JSON"),
        (b"[]", 422, "body"),
        (b'{"model": "fake/echo"}', 422, "messages"),
        (b'{"messages": []}', 422, "messages"),
        (MSG + b'"colour": 1}', 422, "colour"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', 422, "role"),
        (b'{"messages": [{"role": "user"}]}', 422, "content"),
        (MSG + b'"max_steps": 0}', 422, "max_steps"),
        (MSG + b'"model": "acme/x"}', 400, "acme"),
        (MSG + b'"model": "fake"}', 400, "provider"),
        (
            MSG + b'"provider_options": {"delay_s": "slow"}}',
            422,
            "delay_s",
        ),
        (
            MSG + b'"provider_options": {"fail": "boom"}}',
            422,
            "fail",
        ),
        (
            MSG + b'"provider_options": {"dleay_s": 1}}',
            422,
            "dleay_s",
        ),
        (
            MSG + b'"include_return_message_types": ["nope"]}',
            422,
            "nope",
        ),
        (MSG + b'"stream": "maybe"}', 422, "stream"),
    ],
)
async def test_bad_requests_get_a_clear_4xx(
    http: httpx.AsyncClient, payload: bytes, status: int, needle: str
) -> None:
    r = await http.post("/v1/runs", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle.lower() in r.json()["detail"].lower()


async def test_bodies_over_the_limit_are_413(http: httpx.AsyncClient, settings: Any) -> None:
    big = body("x" * (settings.serve.max_body_bytes + 10))
    r = await http.post("/v1/runs", json=big)
    assert r.status_code == 413 and "larger" in r.json()["detail"]

    async def chunked() -> Any:
        for _ in range(settings.serve.max_body_bytes // 1024 + 2):
            yield b" " * 1024

    r = await http.post("/v1/runs", content=chunked(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert (await http.get("/healthz")).status_code == 200


async def test_bad_cursors(http: httpx.AsyncClient) -> None:
    run_id = (await http.post("/v1/runs", json=body(stream=False))).json()["run"]["id"]
    assert (
        await http.get(f"/v1/runs/{run_id}/stream", params={"starting_after": "x"})
    ).status_code == 422
    assert (
        await http.get(f"/v1/runs/{run_id}/stream", params={"starting_after": -1})
    ).status_code == 422
    for bad in ("abc", "-1", "+2", "1_0", "1.0"):  # int() takes "+2" and "1_0"
        r = await http.get(f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": bad})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"], bad
    bad_filter = await http.get(
        f"/v1/runs/{run_id}/stream", params={"include_return_message_types": "nope"}
    )
    assert bad_filter.status_code == 422
    assert (await http.get("/v1/runs", params={"limit": 0})).status_code == 422
    assert (await http.get("/v1/runs", params={"status": "weird"})).status_code == 422


async def test_many_bad_requests_leave_the_server_serving(http: httpx.AsyncClient) -> None:
    answers = await asyncio.gather(
        *(
            http.post("/v1/runs", content=b"{", headers={"content-type": "application/json"})
            for _ in range(50)
        )
    )
    assert {a.status_code for a in answers} == {400}
    r = await http.post("/v1/runs", json=body(stream=False))
    assert r.status_code == 200
