"""`GET /v1/runs/{id}/stream` with a type filter, and what it returns before and after the run's
log expires (the resume window, RAYRUNS_LOG_RETENTION_S, 1 h by default)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx

from tests.conftest import assert_well_formed, body, collect, frames


async def test_a_type_filter_on_a_joined_stream_keeps_errors_and_terminal_frames(
    http: httpx.AsyncClient,
) -> None:
    options = {"reasoning": "hm ok", "fail": "rate_limit", "fail_after": 3}
    full = frames(
        await collect(http, "POST", "/v1/runs", json=body("a b c", provider_options=options))
    )
    run_id = full[0]["run_id"]
    events = await collect(
        http,
        "GET",
        f"/v1/runs/{run_id}/stream",
        params={"include_return_message_types": ["reasoning_message"]},
    )
    assert_well_formed(events, filtered=True)
    got = frames(events)
    assert [f["message_type"] for f in got] == [
        "reasoning_message",
        "reasoning_message",
        "error",
        "stop_reason",
        "usage_statistics",
    ]
    # Filtered frames keep their seq ids: the same frames as the full log's.
    assert got == [f for f in full if f["message_type"] != "assistant_message"]
    assert got[2]["error_type"] == "llm_rate_limit"


async def test_the_log_is_kept_an_hour_then_only_the_outcome_remains(
    http: httpx.AsyncClient, settings: Any
) -> None:
    full = frames(await collect(http, "POST", "/v1/runs", json=body("one two three")))
    run_id = full[0]["run_id"]
    db = sqlite3.connect(settings.actors.resolved_db_path())
    try:
        (expires_at,) = db.execute(
            "SELECT expires_at FROM log_expiry WHERE run_id = ?", (run_id,)
        ).fetchone()
        # Recorded when the run ended, a moment ago: at least an hour from now, less the moment.
        assert settings.actors.log_retention_s >= 3600
        assert expires_at >= time.time() + settings.actors.log_retention_s - 60
        assert frames(await collect(http, "GET", f"/v1/runs/{run_id}/stream")) == full

        with db:  # the hour has passed
            db.execute("UPDATE log_expiry SET expires_at = 0 WHERE run_id = ?", (run_id,))
    finally:
        db.close()
    events = await collect(http, "GET", f"/v1/runs/{run_id}/stream", params={"starting_after": 1})
    assert_well_formed(events)
    expired = frames(events)
    # Only the terminal frames, numbered on from the cursor; the outcome is the recorded one.
    assert [(f["message_type"], f["seq_id"]) for f in expired] == [
        ("stop_reason", 2),
        ("usage_statistics", 3),
    ]
    assert expired[0]["stop_reason"] == "end_turn"
    assert expired[1]["completion_tokens"] == 3 and expired[1]["total_tokens"] == 6
    run = (await http.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "completed"
