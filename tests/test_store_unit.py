"""The SQLite store on its own: durability, filters, retention."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from rayruns.actors.frames import LoggedFrame
from rayruns.actors.records import Run, Usage, utcnow
from rayruns.actors.store import RunStore


def run(i: int, conversation: str | None = None) -> Run:
    return Run(
        id=f"run-{i:032x}",
        status="created",
        model="fake/echo",
        conversation_id=conversation,
        created_at=utcnow() + timedelta(seconds=i),
    )


def test_records_and_logs_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    store = RunStore(path)
    first = run(1, "c")
    store.insert(first, "actor-a")
    done = first.model_copy(
        update={"status": "completed", "stop_reason": "end_turn", "usage": Usage(step_count=1)}
    )
    frames = [LoggedFrame(1, "stop_reason", "{}"), LoggedFrame(2, "usage_statistics", "{}")]
    store.finish(done, frames, 3600, [{"outcome": "completed"}])
    store.insert(run(2, "c"), "actor-b")
    store.close()

    again = RunStore(path)
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


def test_logs_expire_but_records_stay(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.sqlite3")
    record = run(3)
    store.insert(record, None)
    done = record.model_copy(update={"status": "cancelled", "stop_reason": "cancelled"})
    store.finish(done, [LoggedFrame(1, "stop_reason", "{}")], -1, [])
    assert store.frames(record.id) is None
    assert store.purge_expired_logs() == 1
    assert store.get(record.id) == done
