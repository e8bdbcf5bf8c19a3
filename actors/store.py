"""SQLite persistence of run records and finished frame logs. Writes commit before returning."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from rayruns.actors.conversation import PendingCall
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.records import Run, RunStatus
from rayruns.providers.base import Message

_PENDING = TypeAdapter(list[PendingCall])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    conversation_id TEXT,
    created_at REAL NOT NULL,
    actor_name TEXT,
    record TEXT NOT NULL,
    stream_endings TEXT,
    tenant TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_conversation ON runs (conversation_id, created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at DESC);
CREATE TABLE IF NOT EXISTS logs (
    run_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    frames TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_expiry ON logs (expires_at);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (conversation_id, position)
);
CREATE TABLE IF NOT EXISTS pending_calls (
    conversation_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    calls TEXT NOT NULL
);
"""


def history_key(tenant: str | None, conversation_id: str) -> str:
    """Where a conversation's messages are kept: conversations are per tenant."""
    return json.dumps([tenant, conversation_id])


@dataclass(frozen=True, slots=True)
class HistoryUpdate:
    """What a finished run changes in its conversation: messages to append, calls now pending."""

    messages: list[Message]
    pending: list[PendingCall]


class RunStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "tenant" not in columns:  # a database from before tenants: its runs have none
            self._db.execute("ALTER TABLE runs ADD COLUMN tenant TEXT")
        self._db.execute(
            "CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, created_at DESC)"
        )

    def close(self) -> None:
        self._db.close()

    def insert(self, run: Run, actor_name: str | None) -> None:
        self._db.execute(
            "INSERT INTO runs (id, status, conversation_id, created_at, actor_name, record, tenant)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                run.id,
                run.status,
                run.conversation_id,
                run.created_at.timestamp(),
                actor_name,
                run.model_dump_json(),
                run.tenant,
            ),
        )

    def set_actor(self, run_id: str, actor_name: str) -> None:
        self._db.execute("UPDATE runs SET actor_name = ? WHERE id = ?", (actor_name, run_id))

    def update(self, run: Run) -> None:
        self._db.execute(
            "UPDATE runs SET status = ?, record = ? WHERE id = ?",
            (run.status, run.model_dump_json(), run.id),
        )

    def finish(
        self,
        run: Run,
        frames: list[LoggedFrame] | None,
        retention_s: float,
        stream_endings: list[dict[str, Any]],
        history: HistoryUpdate | None = None,
    ) -> None:
        """The terminal record, its log and its conversation's new messages, in one transaction."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE runs SET status = ?, record = ?, stream_endings = ? WHERE id = ?",
                (run.status, run.model_dump_json(), json.dumps(stream_endings), run.id),
            )
            if frames is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO logs (run_id, expires_at, frames) VALUES (?, ?, ?)",
                    (run.id, time.time() + retention_s, json.dumps(frames)),
                )
            if history is not None and run.conversation_id is not None:
                key = history_key(run.tenant, run.conversation_id)
                self._update_history(key, run.id, history)

    def close_wait(self, conversation_id: str, run_id: str, messages: list[Message]) -> None:
        """The calls `run_id` left pending get `messages` (denials) and no longer wait."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._update_history(conversation_id, run_id, HistoryUpdate(messages, []))

    def _update_history(self, conversation_id: str, run_id: str, update: HistoryUpdate) -> None:
        (last,) = self._db.execute(
            "SELECT COALESCE(MAX(position), 0) FROM messages WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        self._db.executemany(
            "INSERT INTO messages (conversation_id, position, run_id, message) VALUES (?, ?, ?, ?)",
            [
                (conversation_id, last + n, run_id, m.model_dump_json(exclude_defaults=True))
                for n, m in enumerate(update.messages, 1)
            ],
        )
        if update.pending:
            self._db.execute(
                "INSERT OR REPLACE INTO pending_calls (conversation_id, run_id, calls)"
                " VALUES (?, ?, ?)",
                (conversation_id, run_id, _PENDING.dump_json(update.pending).decode()),
            )
        else:
            self._db.execute(
                "DELETE FROM pending_calls WHERE conversation_id = ?", (conversation_id,)
            )

    def history(self, conversation_id: str) -> list[tuple[str, Message]]:
        """The conversation's messages in order, each with the id of the run that added it."""
        rows = self._db.execute(
            "SELECT run_id, message FROM messages WHERE conversation_id = ? ORDER BY position",
            (conversation_id,),
        ).fetchall()
        return [(run_id, Message.model_validate_json(m)) for run_id, m in rows]

    def pending(self, conversation_id: str) -> tuple[str | None, list[PendingCall]]:
        """The run whose calls await the client, and those calls (none: `(None, [])`)."""
        row = self._db.execute(
            "SELECT run_id, calls FROM pending_calls WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        return (None, []) if row is None else (row[0], _PENDING.validate_json(row[1]))

    def conversation_exists(self, conversation_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM runs WHERE conversation_id = ? LIMIT 1", (conversation_id,)
        ).fetchone()
        return row is not None

    def get(self, run_id: str) -> Run | None:
        row = self._db.execute("SELECT record FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else Run.model_validate_json(row[0])

    def unfinished(self) -> list[tuple[Run, str | None]]:
        rows = self._db.execute(
            "SELECT record, actor_name FROM runs WHERE status IN ('created', 'running')"
        ).fetchall()
        return [(Run.model_validate_json(record), name) for record, name in rows]

    def query(
        self,
        *,
        conversation_id: str | None,
        status: RunStatus | None,
        limit: int,
        tenant: str | None = None,
    ) -> list[Run]:
        """Newest first; with `tenant`, only that tenant's runs."""
        clauses: list[str] = []
        params: list[object] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        if conversation_id is not None:
            clauses.append("conversation_id = ?")
            params.append(conversation_id)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT record FROM runs {where} ORDER BY created_at DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [Run.model_validate_json(r[0]) for r in rows]

    def frames(self, run_id: str) -> list[LoggedFrame] | None:
        row = self._db.execute(
            "SELECT frames FROM logs WHERE run_id = ? AND expires_at > ?", (run_id, time.time())
        ).fetchone()
        return None if row is None else [LoggedFrame(*f) for f in json.loads(row[0])]

    def stream_endings(self, run_id: str) -> list[dict[str, Any]] | None:
        row = self._db.execute("SELECT stream_endings FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None or row[0] is None else list(json.loads(row[0]))

    def purge_expired_logs(self) -> int:
        return self._db.execute("DELETE FROM logs WHERE expires_at <= ?", (time.time(),)).rowcount
