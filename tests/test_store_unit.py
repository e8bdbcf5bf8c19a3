"""The run store on its own, on SQLite and on PostgreSQL: durability, filters, retention, one
registry per database. Tests of SQLite's file handling take `tmp_path` alone."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from rayruns.actors.conversation import PendingCall
from rayruns.actors.database import Database
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.records import Run, RunStatus, Usage, utcnow
from rayruns.actors.store import HistoryUpdate, RunStore, StoreLocked, history_key
from rayruns.providers.base import Message


def run(i: int, conversation: str | None = None) -> Run:
    return Run(
        id=f"run-{i:032x}",
        status="created",
        model="fake/echo",
        conversation_id=conversation,
        created_at=utcnow() + timedelta(seconds=i),
    )


def test_records_and_logs_survive_reopening(database: Database) -> None:
    store = database.run_store()
    first = run(1, "c")
    store.insert(first, "actor-a")
    done = first.model_copy(
        update={
            "status": "completed",
            "stop_reason": "end_turn",
            "usage": Usage(step_count=1),
            "completed_at": utcnow(),
        }
    )
    frames = [LoggedFrame(1, "stop_reason", "{}"), LoggedFrame(2, "usage_statistics", "{}")]
    store.finish(done, frames, 3600, [{"outcome": "completed"}])
    store.insert(run(2, "c"), "actor-b")
    store.close()

    again = database.run_store()
    assert again.get(first.id) == done
    assert again.frames(first.id) == frames
    assert [r.id for r in again.query(conversation_id="c", status=None, limit=10)] == [
        run(2).id,
        first.id,
    ]
    assert [r.id for r in again.query(conversation_id=None, status="completed", limit=10)] == [
        first.id
    ]
    assert [(r.id, name) for r, name in again.unfinished()] == [(run(2).id, "actor-b")]
    assert again.stream_endings(first.id) == [{"outcome": "completed"}]


def test_logs_expire_but_records_stay(database: Database) -> None:
    store = database.run_store()
    record = run(3)
    store.insert(record, None)
    done = ended(record, "cancelled")
    store.finish(done, [LoggedFrame(1, "stop_reason", "{}")], -1, [])
    assert store.frames(record.id) is None
    assert store.purge_expired_logs() == 1
    assert store.get(record.id) == done


def ended(record: Run, status: RunStatus = "completed") -> Run:
    stop = {"completed": "end_turn", "failed": "error", "cancelled": "cancelled"}[status]
    return record.model_copy(
        update={"status": status, "stop_reason": stop, "usage": Usage(), "completed_at": utcnow()}
    )


def test_a_second_store_on_the_same_database_is_refused_naming_the_owner(
    database: Database,
) -> None:
    first = database.run_store("registry 'r' of the cluster at 10.0.0.1:6379")
    with pytest.raises(StoreLocked) as refused:
        database.run_store("a batch", lock_wait_s=0)
    message = str(refused.value)
    assert "registry 'r' of the cluster at 10.0.0.1:6379" in message
    assert f"pid {os.getpid()}" in message and database.where in message
    first.close()
    database.run_store("the next owner", lock_wait_s=0).close()  # released on close


def test_a_terminal_record_is_never_overwritten(database: Database) -> None:
    store = database.run_store()
    record = run(4)
    store.insert(record, "actor")
    lost = ended(record, "failed")
    assert store.finish(lost, None, 3600, [])
    late = ended(record, "completed")
    assert not store.finish(late, [LoggedFrame(1, "stop_reason", "{}")], 3600, [])
    assert store.get(record.id) == lost
    assert store.frames(record.id) is None, "the refused write left no log"


def test_a_refused_terminal_write_adds_no_history(database: Database) -> None:
    store = database.run_store()
    record = run(11, "chat")
    store.insert(record, "actor")
    first = HistoryUpdate([Message(role="assistant", content="first")], [])
    assert store.finish(ended(record, "failed"), None, 3600, [], first)
    call = PendingCall(id="c1", name="lookup", arguments="{}", server=False)
    late = HistoryUpdate([Message(role="assistant", content="late")], [call])
    assert not store.finish(ended(record), None, 3600, [], late)
    key = history_key(None, "chat")
    assert [m.content for _, m in store.history(key)] == ["first"]
    assert store.pending(key) == (None, [])


def test_running_never_revives_a_terminal_record(database: Database) -> None:
    store = database.run_store()
    record = run(5)
    store.insert(record, "actor")
    cancelled = ended(record, "cancelled")
    store.finish(cancelled, None, 3600, [])
    assert not store.set_running(record.model_copy(update={"status": "running"}))
    assert store.get(record.id) == cancelled
    fresh = run(6)
    store.insert(fresh, "actor")
    assert store.set_running(fresh.model_copy(update={"status": "running"}))
    assert store.get(fresh.id).status == "running"  # type: ignore[union-attr]


def test_logs_are_read_a_page_at_a_time(database: Database) -> None:
    store = database.run_store()
    record = run(7)
    store.insert(record, None)
    log = [LoggedFrame(n, "assistant_message", f'{{"n":{n}}}') for n in range(1, 11)]
    store.finish(ended(record), log, 3600, [])
    assert store.frames(record.id, 0, 4) == log[:4]
    assert store.frames(record.id, 4, 4) == log[4:8]
    assert store.frames(record.id, 8, 4) == log[8:]
    assert store.frames(record.id, 10, 4) == []
    # A client's cursor past SQLite's integers (Last-Event-ID is any non-negative integer).
    assert store.frames(record.id, 2**64, 4) == []


def test_records_past_retention_are_purged_with_their_logs(database: Database) -> None:
    store = database.run_store()
    old, recent, live = run(8), run(9), run(10)
    for r in (old, recent, live):
        store.insert(r, None)
    finished_long_ago = ended(old).model_copy(update={"completed_at": utcnow() - timedelta(days=2)})
    store.finish(finished_long_ago, [LoggedFrame(1, "stop_reason", "{}")], 10**9, [])
    store.finish(ended(recent), None, 3600, [])
    assert store.purge_records(86400) == 1
    assert store.get(old.id) is None and store.frames(old.id) is None
    assert store.get(recent.id) is not None and store.get(live.id) is not None


def test_a_conversation_history_goes_with_its_last_record(database: Database) -> None:
    store = database.run_store()
    long_ago = utcnow() - timedelta(days=2)
    gone, kept_old, kept_new = run(12, "gone"), run(13, "kept"), run(14, "kept")
    call = PendingCall(id="c1", name="lookup", arguments="{}", server=False)
    for r in (gone, kept_old, kept_new):
        store.insert(r, None)
        end = ended(r) if r is kept_new else ended(r).model_copy(update={"completed_at": long_ago})
        update = HistoryUpdate([Message(role="assistant", content=r.id)], [call])
        assert store.finish(end, None, 3600, [], update)
    assert store.purge_records(86400) == 2
    assert store.history(history_key(None, "gone")) == []
    assert store.pending(history_key(None, "gone")) == (None, [])
    kept = history_key(None, "kept")
    assert [m.content for _, m in store.history(kept)] == [kept_old.id, kept_new.id]
    assert store.pending(kept) == (kept_new.id, [call])


def test_terminal_records_commit_with_a_synced_wal(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    record = run(11)
    store.insert(record, None)
    store.finish(ended(record), None, 3600, [])
    at_commit = statements[: statements.index("COMMIT")]
    synchronous = [s for s in at_commit if s.startswith("PRAGMA synchronous")]
    assert synchronous[-1] == "PRAGMA synchronous=FULL", statements
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1, "NORMAL again after"


def test_a_version_0_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    record = ended(run(12))
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE runs (id TEXT PRIMARY KEY, status TEXT NOT NULL, conversation_id TEXT,"
        " created_at REAL NOT NULL, actor_name TEXT, record TEXT NOT NULL, stream_endings TEXT);"
        "CREATE TABLE logs (run_id TEXT PRIMARY KEY, expires_at REAL NOT NULL,"
        " frames TEXT NOT NULL);"
    )
    db.execute(
        "INSERT INTO runs VALUES (?, 'completed', NULL, 0, NULL, ?, '[]')",
        (record.id, record.model_dump_json()),
    )
    frames = [[1, "stop_reason", "{}"], [2, "usage_statistics", '{"x":1}']]
    db.execute("INSERT INTO logs VALUES (?, 1e12, ?)", (record.id, json.dumps(frames)))
    db.commit()
    db.close()
    store = RunStore(path)
    assert store.get(record.id) == record
    assert store.frames(record.id) == [LoggedFrame(*f) for f in frames]
    assert store.purge_records(0) == 1, "its end time was filled in from the record"


def test_opening_a_current_database_does_not_wait_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    RunStore(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # e.g. `rayruns keys` mid-write as a registry restarts
    try:
        store = RunStore(path)
        assert store.get("run-none") is None
        store.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
