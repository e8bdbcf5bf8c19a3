"""Resuming streams from any cursor, joining live runs, and what a disconnect does."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import assert_well_formed, body, collect, frames, open_sse, wait_terminal

WORDS = " ".join(f"w{i}" for i in range(12))


async def test_resume_from_every_cursor_after_the_end(http: httpx.AsyncClient) -> None:
    full = await collect(http, "POST", "/v1/runs", json=body(WORDS))
    logged = frames(full)
    run_id = logged[0]["run_id"]
    for cursor in range(len(logged) + 1):
        events = await collect(
            http, "GET", f"/v1/runs/{run_id}/stream", params={"starting_after": cursor}
        )
        assert events[-1].done
        assert frames(events) == logged[cursor:], cursor


async def test_last_event_id_is_a_cursor(http: httpx.AsyncClient) -> None:
    logged = frames(await collect(http, "POST", "/v1/runs", json=body(WORDS)))
    run_id = logged[0]["run_id"]
    events = await collect(http, "GET", f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": "5"})
    assert frames(events) == logged[5:]
    # The query wins over the header.
    events = await collect(
        http,
        "GET",
        f"/v1/runs/{run_id}/stream",
        params={"starting_after": 9},
        headers={"Last-Event-ID": "2"},
    )
    assert frames(events) == logged[9:]


async def test_resume_during_the_run_has_no_gap_and_no_duplicate(
    http: httpx.AsyncClient, registry: Any
) -> None:
    request = body(WORDS, background=True, provider_options={"delay_s": 0.05})
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    first = [(await stream.next_frame()).json for _ in range(3)]
    await cm.__aexit__(None, None, None)  # drop the connection mid-run
    cursor = first[-1]["seq_id"]
    resumed = await collect(
        http, "GET", f"/v1/runs/{stream.run_id}/stream", headers={"Last-Event-ID": str(cursor)}
    )
    combined = first + frames(resumed)
    assert [f["seq_id"] for f in combined] == list(range(1, len(combined) + 1))
    text = "".join(f["content"] for f in combined if f["message_type"] == "assistant_message")
    assert text == WORDS
    run = await wait_terminal(registry, stream.run_id)
    assert run.status == "completed", "a background run goes on without its client"


async def test_a_second_client_joins_a_live_foreground_run(http: httpx.AsyncClient) -> None:
    request = body(WORDS, provider_options={"delay_s": 0.05})
    owner, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    try:
        await owner.next_frame()
        joined = await collect(http, "GET", f"/v1/runs/{owner.run_id}/stream")
        mine = await owner.rest()
        assert_well_formed(owner.seen)
        assert_well_formed(joined)
        assert frames(joined) == frames(owner.seen)
        assert mine[-1].done
    finally:
        await cm.__aexit__(None, None, None)


async def test_a_foreground_run_whose_client_leaves_is_cancelled(
    http: httpx.AsyncClient, registry: Any
) -> None:
    request = body(WORDS, provider_options={"hang_after": 1})
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    await stream.next_frame()
    await cm.__aexit__(None, None, None)
    run = await wait_terminal(registry, stream.run_id, timeout_s=30)
    assert run.status == "cancelled" and run.stop_reason == "cancelled"
    replay = frames(await collect(http, "GET", f"/v1/runs/{stream.run_id}/stream"))
    assert replay[-2]["stop_reason"] == "cancelled"


async def test_a_background_run_whose_client_leaves_goes_on(
    http: httpx.AsyncClient, registry: Any
) -> None:
    request = body("a b c d e f", background=True, provider_options={"delay_s": 0.05})
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    await stream.next_frame()
    await cm.__aexit__(None, None, None)
    run = await wait_terminal(registry, stream.run_id)
    assert run.status == "completed" and run.background
    assert run.usage.completion_tokens == 6


async def test_a_reader_leaving_a_joined_stream_does_not_cancel(
    http: httpx.AsyncClient, registry: Any
) -> None:
    request = body("a b c d e f", provider_options={"delay_s": 0.05})
    owner, owner_cm = await open_sse(http, "POST", "/v1/runs", json=request)
    try:
        await owner.next_frame()
        watcher, cm = await open_sse(http, "GET", f"/v1/runs/{owner.run_id}/stream")
        await watcher.next_frame()
        await cm.__aexit__(None, None, None)
        rest = await owner.rest()
        assert frames(rest)[-2]["stop_reason"] == "end_turn"
    finally:
        await owner_cm.__aexit__(None, None, None)


async def test_resume_from_every_cursor_during_the_run(
    http: httpx.AsyncClient, registry: Any
) -> None:
    request = body(WORDS, background=True, provider_options={"delay_s": 0.1})
    owner, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    try:
        for _ in range(4):
            await owner.next_frame()
        cursors = range(5)
        joined = await asyncio.gather(
            *(
                collect(
                    http, "GET", f"/v1/runs/{owner.run_id}/stream", params={"starting_after": c}
                )
                for c in cursors
            )
        )
        await owner.rest()
    finally:
        await cm.__aexit__(None, None, None)
    logged = frames(owner.seen)
    assert (await wait_terminal(registry, owner.run_id)).status == "completed"
    for cursor, events in zip(cursors, joined, strict=True):
        assert_well_formed(events)
        assert frames(events) == logged[cursor:], cursor
