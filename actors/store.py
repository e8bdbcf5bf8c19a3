"""SQLite persistence of run records and finished frame logs. Writes commit before returning.

One store per database file: `RunStore` holds an exclusive lock on `<db>.lock` for as long as it
is open, so a second registry (a `rayruns batch` that started its own Ray beside a server) fails
at once with `StoreLocked`, naming the owner, instead of taking the other's live runs for lost.

Transitions are guarded in SQL as well as in the registry: a terminal record is never
overwritten, and a run is only made `running` from `created`.

Terminal records commit with `synchronous=FULL` (the WAL is synced before the commit returns);
the other writes use NORMAL, which may lose the last ones on power loss, never corrupt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
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
    tenant TEXT,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_conversation ON runs (conversation_id, created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_end ON runs (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, created_at DESC);
CREATE TABLE IF NOT EXISTS log_expiry (
    run_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS log_expiry_by_time ON log_expiry (expires_at);
CREATE TABLE IF NOT EXISTS log_frames (
    run_id TEXT NOT NULL,
    seq_id INTEGER NOT NULL,
    message_type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq_id)
) WITHOUT ROWID;
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

_UNFINISHED = "('created', 'running')"


def runs_filter(
    mark: str, tenant: str | None, conversation_id: str | None, status: RunStatus | None
) -> tuple[str, list[object]]:
    """The WHERE clause of a runs query and its parameters, with `mark` as the placeholder
    (`?` for SQLite, `%s` for PostgreSQL)."""
    chosen = {"tenant": tenant, "conversation_id": conversation_id, "status": status}
    clauses = [f"{column} = {mark}" for column, value in chosen.items() if value is not None]
    params: list[object] = [value for value in chosen.values() if value is not None]
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


_SQLITE_INT_MAX = 2**63 - 1

# Logs used to be one JSON array each in `logs` (a whole log per read, and a log could exceed
# SQLite's row limit); now they are one row per frame.
_BACKFILL_ENDED_AT = f"""
UPDATE runs SET ended_at = (julianday(json_extract(record, '$.completed_at')) - 2440587.5) * 86400
WHERE status NOT IN {_UNFINISHED}
"""
_FROM_V0_LOGS = """
INSERT OR IGNORE INTO log_expiry (run_id, expires_at) SELECT run_id, expires_at FROM logs;
INSERT OR IGNORE INTO log_frames (run_id, seq_id, message_type, data)
    SELECT logs.run_id, json_extract(f.value, '$[0]'), json_extract(f.value, '$[1]'),
           json_extract(f.value, '$[2]')
    FROM logs, json_each(logs.frames) AS f;
DROP TABLE logs;
"""
# How long a write waits for another connection's transaction before failing.
_BUSY_TIMEOUT_S = 30.0
# A registry restarted by Ray opens the store as its predecessor's process is being reaped.
LOCK_WAIT_S = 5.0


class StoreLocked(RuntimeError):
    """Another process has this database open as its registry's store."""

    def __init__(self, path: Path | str, owner: str) -> None:
        # A Path: the SQLite file; a str: a PostgreSQL URL without its password.
        own = "file with RAYRUNS_DB_PATH" if isinstance(path, Path) else "database (RAYRUNS_DB_URL)"
        super().__init__(
            f"the run database {path} is in use by another registry ({owner}); one registry per "
            f"database: join that cluster (rayruns batch --address ...), or give this one its "
            f"own {own}"
        )
        self.path = path
        self.owner = owner

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.owner))


def history_key(tenant: str | None, conversation_id: str) -> str:
    """Where a conversation's messages are kept: conversations are per tenant."""
    return json.dumps([tenant, conversation_id])


@dataclass(frozen=True, slots=True)
class HistoryUpdate:
    """What a finished run changes in its conversation: messages to append, calls now pending."""

    messages: list[Message]
    pending: list[PendingCall]


class RunStore:
    def __init__(self, path: Path, owner: str = "", lock_wait_s: float = LOCK_WAIT_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        owner = f"{owner or 'a run store'}, pid {os.getpid()} on {socket.gethostname()}"
        self._lock = _lock(path, owner, lock_wait_s)
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=_BUSY_TIMEOUT_S, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except BaseException:
            self._lock.close()
            raise

    def _migrate(self) -> None:
        """Bring a database of any earlier layout up to this one. Writes only when something
        is missing, so that opening a current database never waits for another writer."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        missing = {"tenant", "ended_at"} - columns if "runs" in tables else set()
        if missing or "logs" in tables:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if "tenant" in missing:  # from before tenants: its runs have none
                    self._db.execute("ALTER TABLE runs ADD COLUMN tenant TEXT")
                if "ended_at" in missing:  # from before record retention
                    self._db.execute("ALTER TABLE runs ADD COLUMN ended_at REAL")
                    self._db.execute(_BACKFILL_ENDED_AT)
                self._create_schema()
                if "logs" in tables:  # one JSON array per log, before paged logs
                    for statement in _FROM_V0_LOGS.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
        else:
            self._create_schema()  # CREATE ... IF NOT EXISTS of what exists takes no lock

    def _create_schema(self) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def close(self) -> None:
        self._db.close()
        self._lock.close()

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
        self._db.execute(
            f"UPDATE runs SET actor_name = ? WHERE id = ? AND status IN {_UNFINISHED}",
            (actor_name, run_id),
        )

    def set_running(self, run: Run) -> bool:
        """`created` → `running`; False (and nothing written) from any other status."""
        assert run.status == "running"
        cursor = self._db.execute(
            "UPDATE runs SET status = 'running', record = ? WHERE id = ? AND status = 'created'",
            (run.model_dump_json(), run.id),
        )
        return cursor.rowcount == 1

    def finish(
        self,
        run: Run,
        frames: list[LoggedFrame] | None,
        retention_s: float,
        stream_endings: list[dict[str, Any]],
        history: HistoryUpdate | None = None,
    ) -> bool:
        """The terminal record, its log and its conversation's new messages, in one durable
        transaction. False (and nothing written, history included) when the stored record is
        already terminal: the first terminal write wins."""
        assert run.terminal and run.completed_at is not None
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                cursor = self._db.execute(
                    "UPDATE runs SET status = ?, record = ?, stream_endings = ?, ended_at = ?"
                    f" WHERE id = ? AND status IN {_UNFINISHED}",
                    (
                        run.status,
                        run.model_dump_json(),
                        json.dumps(stream_endings),
                        run.completed_at.timestamp(),
                        run.id,
                    ),
                )
                if cursor.rowcount != 1:
                    return False
                if frames is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO log_expiry (run_id, expires_at) VALUES (?, ?)",
                        (run.id, time.time() + retention_s),
                    )
                    self._db.executemany(
                        "INSERT OR REPLACE INTO log_frames (run_id, seq_id, message_type, data)"
                        " VALUES (?, ?, ?, ?)",
                        ((run.id, f.seq_id, f.message_type, f.data) for f in frames),
                    )
                if history is not None and run.conversation_id is not None:
                    key = history_key(run.tenant, run.conversation_id)
                    self._update_history(key, run.id, history)
                return True
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

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
            f"SELECT record, actor_name FROM runs WHERE status IN {_UNFINISHED}"
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
        where, params = runs_filter("?", tenant, conversation_id, status)
        rows = self._db.execute(
            f"SELECT record FROM runs {where} ORDER BY created_at DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [Run.model_validate_json(r[0]) for r in rows]

    def frames(self, run_id: str, after_seq: int = 0, limit: int = -1) -> list[LoggedFrame] | None:
        """Up to `limit` (-1: all) logged frames after `after_seq`; None when no log is kept
        (lost with its actor, or expired)."""
        kept = self._db.execute(
            "SELECT 1 FROM log_expiry WHERE run_id = ? AND expires_at > ?", (run_id, time.time())
        ).fetchone()
        if kept is None:
            return None
        # A client's cursor may be any non-negative integer; SQLite's stop at 2**63 - 1, and
        # no seq_id comes near that: past it, nothing follows.
        if after_seq >= _SQLITE_INT_MAX:
            return []
        rows = self._db.execute(
            "SELECT seq_id, message_type, data FROM log_frames WHERE run_id = ? AND seq_id > ?"
            " ORDER BY seq_id LIMIT ?",
            (run_id, after_seq, limit),
        ).fetchall()
        return [LoggedFrame(*row) for row in rows]

    def stream_endings(self, run_id: str) -> list[dict[str, Any]] | None:
        row = self._db.execute("SELECT stream_endings FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None or row[0] is None else list(json.loads(row[0]))

    def purge_expired_logs(self) -> int:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            now = time.time()
            self._db.execute(
                "DELETE FROM log_frames WHERE run_id IN"
                " (SELECT run_id FROM log_expiry WHERE expires_at <= ?)",
                (now,),
            )
            deleted: int = self._db.execute(
                "DELETE FROM log_expiry WHERE expires_at <= ?", (now,)
            ).rowcount
            return deleted

    def purge_records(self, retention_s: float) -> int:
        """Terminal records that ended more than `retention_s` ago, with whatever log is left,
        and the history of each conversation that has no record left."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cutoff = time.time() - retention_s
            old = "SELECT id FROM runs WHERE ended_at IS NOT NULL AND ended_at <= ?"
            conversations = self._db.execute(
                "SELECT DISTINCT tenant, conversation_id FROM runs"
                " WHERE ended_at IS NOT NULL AND ended_at <= ? AND conversation_id IS NOT NULL",
                (cutoff,),
            ).fetchall()
            self._db.execute(f"DELETE FROM log_frames WHERE run_id IN ({old})", (cutoff,))
            self._db.execute(f"DELETE FROM log_expiry WHERE run_id IN ({old})", (cutoff,))
            deleted: int = self._db.execute(
                "DELETE FROM runs WHERE ended_at IS NOT NULL AND ended_at <= ?", (cutoff,)
            ).rowcount
            for tenant, conversation_id in conversations:
                left = self._db.execute(
                    "SELECT 1 FROM runs WHERE conversation_id = ? AND tenant IS ? LIMIT 1",
                    (conversation_id, tenant),
                ).fetchone()
                if left is None:
                    key = history_key(tenant, conversation_id)
                    self._db.execute("DELETE FROM messages WHERE conversation_id = ?", (key,))
                    self._db.execute("DELETE FROM pending_calls WHERE conversation_id = ?", (key,))
            return deleted


def _lock(path: Path, owner: str, wait_s: float) -> Any:
    """An exclusive lock on `<db>.lock`, held while the returned file is open; the kernel
    releases it when the process dies, however it dies."""
    lock_path = path.with_name(path.name + ".lock")
    file = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's life
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                file.seek(0)
                other = file.read().strip() or "unknown"
                file.close()
                raise StoreLocked(path, other) from None
            time.sleep(0.1)  # the lock has no event to wait on but its release
    with contextlib.suppress(OSError):
        file.seek(0)
        file.truncate()
        file.write(owner)
        file.flush()
    return file
