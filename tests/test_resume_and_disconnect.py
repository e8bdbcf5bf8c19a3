"""Resuming streams from any cursor, joining live runs, and what a disconnect does."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import (
    SSEStream,
    assert_well_formed,
    body,
    cancel_while_running,
    collect,
    departures_handled,
    frames,
    goes_on,
    open_sse,
    wait_terminal,
)

WORDS = " ".join(f"w{i}" for i in range(12))
LONG = " ".join(f"w{i}" for i in range(2000))  # never ends by itself within a test


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
    # Six words, then the provider hangs: the resume is live, never a replay of an ended run.
    request = body(WORDS, background=True, provider_options={"hang_after": 6})
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    first = [(await stream.next_frame()).json for _ in range(3)]
    await cm.__aexit__(None, None, None)  # drop the connection mid-run
    cursor = first[-1]["seq_id"]
    resumed, rcm = await open_sse(
        http, "GET", f"/v1/runs/{stream.run_id}/stream", headers={"Last-Event-ID": str(cursor)}
    )
    try:
        more = [(await resumed.next_frame()).json for _ in range(3)]
        await cancel_while_running(http, stream.run_id)
        await resumed.rest()
    finally:
        await rcm.__aexit__(None, None, None)
    assert_well_formed(resumed.seen)
    combined = first + frames(resumed.seen)
    assert combined[3:6] == more
    assert [f["seq_id"] for f in combined] == list(range(1, len(combined) + 1))
    text = "".join(f["content"] for f in combined if f["message_type"] == "assistant_message")
    assert text == "w0 w1 w2 w3 w4 w5 "
    assert combined[-2]["stop_reason"] == "cancelled"


async def test_a_second_client_joins_a_live_foreground_run(http: httpx.AsyncClient) -> None:
    request = body(WORDS, provider_options={"hang_after": 4})
    owner, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    try:
        await owner.next_frame()
        joined, jcm = await open_sse(http, "GET", f"/v1/runs/{owner.run_id}/stream")
        try:
            await joined.next_frame()
            await cancel_while_running(http, owner.run_id)  # joined while it ran
            await joined.rest()
        finally:
            await jcm.__aexit__(None, None, None)
        mine = await owner.rest()
        assert_well_formed(owner.seen)
        assert_well_formed(joined.seen)
        assert frames(joined.seen) == frames(owner.seen)
        assert frames(joined.seen)[-2]["stop_reason"] == "cancelled"
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
    run = await wait_terminal(registry, stream.run_id, timeout_s=60)  # a hang guard
    assert run.status == "cancelled" and run.stop_reason == "cancelled"
    replay = frames(await collect(http, "GET", f"/v1/runs/{stream.run_id}/stream"))
    assert replay[-2]["stop_reason"] == "cancelled"


async def test_a_background_run_whose_client_leaves_goes_on(
    http: httpx.AsyncClient, registry: Any
) -> None:
    request = body(LONG, background=True, provider_options={"delay_s": 0.05})
    async with departures_handled(http, registry):
        stream, cm = await open_sse(http, "POST", "/v1/runs", json=request)
        first = await stream.next_frame()
        await cm.__aexit__(None, None, None)
    await goes_on(http, stream.run_id, first.json["seq_id"])
    assert (await wait_terminal(registry, stream.run_id)).background


async def test_a_reader_leaving_a_joined_stream_does_not_cancel(
    http: httpx.AsyncClient, registry: Any
) -> None:
    request = body(LONG, provider_options={"delay_s": 0.05})
    owner, owner_cm = await open_sse(http, "POST", "/v1/runs", json=request)
    try:
        first = await owner.next_frame()
        async with departures_handled(http, registry):
            watcher, cm = await open_sse(http, "GET", f"/v1/runs/{owner.run_id}/stream")
            await watcher.next_frame()
            await cm.__aexit__(None, None, None)
        await goes_on(http, owner.run_id, first.json["seq_id"])
        rest = await owner.rest()
        assert frames(rest)[-2]["stop_reason"] == "cancelled"
    finally:
        await owner_cm.__aexit__(None, None, None)


async def test_resume_from_every_cursor_during_the_run(
    http: httpx.AsyncClient, registry: Any
) -> None:
    request = body(WORDS, background=True, provider_options={"hang_after": 8})
    owner, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    cursors = range(5)
    joined: list[tuple[SSEStream, Any]] = []
    try:
        for _ in range(4):
            await owner.next_frame()
        for c in cursors:
            url = f"/v1/runs/{owner.run_id}/stream"
            joined.append(await open_sse(http, "GET", url, params={"starting_after": c}))
        await cancel_while_running(http, owner.run_id)  # every reader joined a live run
        for stream, _ in joined:
            await stream.rest()
        await owner.rest()
    finally:
        for _, jcm in joined:
            await jcm.__aexit__(None, None, None)
        await cm.__aexit__(None, None, None)
    logged = frames(owner.seen)
    assert logged[-2]["stop_reason"] == "cancelled"
    for cursor, (stream, _) in zip(cursors, joined, strict=True):
        assert_well_formed(stream.seen)
        assert frames(stream.seen) == logged[cursor:], cursor
