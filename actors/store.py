"""SQLite persistence of run records and finished frame logs. Writes commit before returning."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from rayruns.actors.frames import LoggedFrame
from rayruns.actors.records import Run, RunStatus

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
"""


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
    ) -> None:
        """The terminal record and its log, in one transaction."""
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
