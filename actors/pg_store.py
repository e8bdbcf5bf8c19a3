"""PostgreSQL persistence of run records, frame logs and conversations (RAYRUNS_DB_URL).

The same interface and guarantees as the SQLite `RunStore`: one registry per database (a
session-level advisory lock held on the store's connection; the server drops it when that
connection ends, however the registry dies), transitions guarded in SQL (a terminal record is
never overwritten; only `created` becomes `running`), the terminal record, its log and its
conversation's messages in one transaction, logs one row per frame, read a page at a time.

Every write commits before the method returns, with the server's `synchronous_commit` (on by
default: durable once acknowledged). psycopg is imported only when a URL is configured: it is
the `postgres` extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from pydantic import TypeAdapter

from rayruns.actors.conversation import PendingCall
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.pg_schema import (
    DEAD_SESSION_S,
    LOCK_KEY,
    connect,
    create_schema,
    redacted,
)
from rayruns.actors.records import Run, RunStatus
from rayruns.actors.store import HistoryUpdate, StoreLocked, history_key, runs_filter
from rayruns.providers.base import Message

_PENDING = TypeAdapter(list[PendingCall])
T = TypeVar("T")
_UNFINISHED = "('created', 'running')"
# A registry whose node vanished (no FIN: a head lost with its machine) keeps its session, and the
# lock, until the server's keepalives give up on it (DEAD_SESSION_S); its successor waits longer.
PG_LOCK_WAIT_S = 2 * DEAD_SESSION_S


class PgRunStore:
    def __init__(self, url: str, owner: str = "", lock_wait_s: float = PG_LOCK_WAIT_S) -> None:
        self.url = url
        self.where = redacted(url)
        self._owner = f"{owner or 'a run store'}, pid {os.getpid()} on {socket.gethostname()}"
        self._lock_wait_s = lock_wait_s
        # One statement or transaction at a time on the one connection that holds the lock.
        self._mutex = threading.RLock()
        self._db = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        db = connect(self.url)
        try:
            self._take_lock(db)
            create_schema(db)
            db.execute(
                "INSERT INTO registry_owner (id, owner) VALUES (1, %s)"
                " ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner",
                (self._owner,),
            )
        except BaseException:
            db.close()
            raise
        return db

    def _take_lock(self, db: psycopg.Connection[Any]) -> None:
        deadline = time.monotonic() + self._lock_wait_s
        while True:
            row = db.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if row is not None and row[0]:
                break
            if time.monotonic() >= deadline:
                raise StoreLocked(self.where, self._lock_holder(db))
            time.sleep(0.1)  # the lock has no event to wait on but its release

    @staticmethod
    def _lock_holder(db: psycopg.Connection[Any]) -> str:
        with contextlib.suppress(psycopg.Error):
            row = db.execute("SELECT owner FROM registry_owner WHERE id = 1").fetchone()
            if row is not None:
                return str(row[0])
        return "unknown"

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """The store's connection; after it broke (the server restarted), a new one that takes
        the lock again, or fails with StoreLocked when another registry took it meanwhile."""
        with self._mutex:
            if self._db.closed:
                self._db = self._connect()
            yield self._db

    def _again_if_lost(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`fn` on the connection, and once more on a new one if the connection was lost under
        it (the database restarted): for reads, and for the insert, which is safe to repeat."""
        with self._mutex:
            try:
                with self._conn() as db:
                    return fn(db)
            except psycopg.OperationalError:
                if not self._db.closed:
                    raise
            with self._conn() as db:
                return fn(db)

    def close(self) -> None:
        with self._mutex:
            self._db.close()  # ends the session, and with it the advisory lock

    def insert(self, run: Run, actor_name: str | None) -> None:
        row = (
            run.id,
            run.status,
            run.conversation_id,
            run.created_at.timestamp(),
            actor_name,
            run.model_dump_json(),
            run.tenant,
        )
        try:
            self._again_if_lost(
                lambda db: db.execute(
                    "INSERT INTO runs (id, status, conversation_id, created_at, actor_name,"
                    " record, tenant) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    row,
                )
            )
        except psycopg.errors.UniqueViolation:
            # A repeat whose first try committed before its connection went finds this very row.
            if self.get(run.id) != run:
                raise

    def set_actor(self, run_id: str, actor_name: str) -> None:
        with self._conn() as db:
            db.execute(
                f"UPDATE runs SET actor_name = %s WHERE id = %s AND status IN {_UNFINISHED}",
                (actor_name, run_id),
            )

    def set_running(self, run: Run) -> bool:
        """`created` → `running`; False (and nothing written) from any other status."""
        assert run.status == "running"
        with self._conn() as db:
            cursor = db.execute(
                "UPDATE runs SET status = 'running', record = %s"
                " WHERE id = %s AND status = 'created'",
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
        """The terminal record, its log and its conversation's new messages, in one
        transaction. False (and nothing written, history included) when the stored record is
        already terminal: the first terminal write wins."""
        assert run.terminal and run.completed_at is not None
        with self._conn() as db, db.transaction():
            # The row lock taken here orders two finishes of one run: the second sees the first's
            # terminal status once it commits, and writes nothing.
            cursor = db.execute(
                "UPDATE runs SET status = %s, record = %s, stream_endings = %s, ended_at = %s"
                f" WHERE id = %s AND status IN {_UNFINISHED}",
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
                db.execute(
                    "INSERT INTO log_expiry (run_id, expires_at) VALUES (%s, %s)"
                    " ON CONFLICT (run_id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                    (run.id, time.time() + retention_s),
                )
                with db.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO log_frames (run_id, seq_id, message_type, data)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT (run_id, seq_id) DO UPDATE"
                        " SET message_type = EXCLUDED.message_type, data = EXCLUDED.data",
                        [(run.id, f.seq_id, f.message_type, f.data) for f in frames],
                    )
            if history is not None and run.conversation_id is not None:
                key = history_key(run.tenant, run.conversation_id)
                _update_history(db, key, run.id, history)
            return True

    def close_wait(self, conversation_id: str, run_id: str, messages: list[Message]) -> None:
        """The calls `run_id` left pending get `messages` (denials) and no longer wait."""
        with self._conn() as db, db.transaction():
            _update_history(db, conversation_id, run_id, HistoryUpdate(messages, []))

    def history(self, conversation_id: str) -> list[tuple[str, Message]]:
        """The conversation's messages in order, each with the id of the run that added it."""
        rows = self._again_if_lost(
            lambda db: db.execute(
                "SELECT run_id, message FROM messages WHERE conversation_id = %s ORDER BY position",
                (conversation_id,),
            ).fetchall()
        )
        return [(run_id, Message.model_validate_json(m)) for run_id, m in rows]

    def pending(self, conversation_id: str) -> tuple[str | None, list[PendingCall]]:
        """The run whose calls await the client, and those calls (none: `(None, [])`)."""
        row = self._again_if_lost(
            lambda db: db.execute(
                "SELECT run_id, calls FROM pending_calls WHERE conversation_id = %s",
                (conversation_id,),
            ).fetchone()
        )
        return (None, []) if row is None else (row[0], _PENDING.validate_json(row[1]))

    def conversation_exists(self, conversation_id: str) -> bool:
        row = self._again_if_lost(
            lambda db: db.execute(
                "SELECT 1 FROM runs WHERE conversation_id = %s LIMIT 1", (conversation_id,)
            ).fetchone()
        )
        return row is not None

    def get(self, run_id: str) -> Run | None:
        row = self._again_if_lost(
            lambda db: db.execute("SELECT record FROM runs WHERE id = %s", (run_id,)).fetchone()
        )
        return None if row is None else Run.model_validate_json(row[0])

    def unfinished(self) -> list[tuple[Run, str | None]]:
        rows = self._again_if_lost(
            lambda db: db.execute(
                f"SELECT record, actor_name FROM runs WHERE status IN {_UNFINISHED}"
            ).fetchall()
        )
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
        where, params = runs_filter("%s", tenant, conversation_id, status)
        rows = self._again_if_lost(
            lambda db: db.execute(
                f"SELECT record FROM runs {where} ORDER BY created_at DESC LIMIT %s",
                (*params, limit),
            ).fetchall()
        )
        return [Run.model_validate_json(r[0]) for r in rows]

    def frames(self, run_id: str, after_seq: int = 0, limit: int = -1) -> list[LoggedFrame] | None:
        """Up to `limit` (-1: all) logged frames after `after_seq`; None when no log is kept
        (lost with its actor, or expired)."""

        def read(db: psycopg.Connection[Any]) -> list[LoggedFrame] | None:
            kept = db.execute(
                "SELECT 1 FROM log_expiry WHERE run_id = %s AND expires_at > %s",
                (run_id, time.time()),
            ).fetchone()
            if kept is None:
                return None
            rows = db.execute(
                "SELECT seq_id, message_type, data FROM log_frames"
                " WHERE run_id = %s AND seq_id > %s ORDER BY seq_id LIMIT %s",
                (run_id, after_seq, None if limit < 0 else limit),  # LIMIT NULL: all
            ).fetchall()
            return [LoggedFrame(*row) for row in rows]

        return self._again_if_lost(read)

    def stream_endings(self, run_id: str) -> list[dict[str, Any]] | None:
        row = self._again_if_lost(
            lambda db: db.execute(
                "SELECT stream_endings FROM runs WHERE id = %s", (run_id,)
            ).fetchone()
        )
        return None if row is None or row[0] is None else list(json.loads(row[0]))

    def purge_expired_logs(self) -> int:
        with self._conn() as db, db.transaction():
            now = time.time()
            db.execute(
                "DELETE FROM log_frames WHERE run_id IN"
                " (SELECT run_id FROM log_expiry WHERE expires_at <= %s)",
                (now,),
            )
            return db.execute("DELETE FROM log_expiry WHERE expires_at <= %s", (now,)).rowcount

    def purge_records(self, retention_s: float) -> int:
        """Terminal records that ended more than `retention_s` ago, with whatever log is left,
        and the history of each conversation that has no record left."""
        with self._conn() as db, db.transaction():
            cutoff = time.time() - retention_s
            old = "SELECT id FROM runs WHERE ended_at IS NOT NULL AND ended_at <= %s"
            conversations = db.execute(
                "SELECT DISTINCT tenant, conversation_id FROM runs"
                " WHERE ended_at IS NOT NULL AND ended_at <= %s AND conversation_id IS NOT NULL",
                (cutoff,),
            ).fetchall()
            db.execute(f"DELETE FROM log_frames WHERE run_id IN ({old})", (cutoff,))
            db.execute(f"DELETE FROM log_expiry WHERE run_id IN ({old})", (cutoff,))
            deleted = db.execute(
                "DELETE FROM runs WHERE ended_at IS NOT NULL AND ended_at <= %s", (cutoff,)
            ).rowcount
            for tenant, conversation_id in conversations:
                left = db.execute(
                    "SELECT 1 FROM runs WHERE conversation_id = %s"
                    " AND tenant IS NOT DISTINCT FROM %s LIMIT 1",
                    (conversation_id, tenant),
                ).fetchone()
                if left is None:
                    key = history_key(tenant, conversation_id)
                    db.execute("DELETE FROM messages WHERE conversation_id = %s", (key,))
                    db.execute("DELETE FROM pending_calls WHERE conversation_id = %s", (key,))
            return deleted


def _update_history(
    db: psycopg.Connection[Any], conversation_id: str, run_id: str, update: HistoryUpdate
) -> None:
    # Inside the caller's transaction; one registry per database, so no other writer races
    # for the next position.
    row = db.execute(
        "SELECT COALESCE(MAX(position), 0) FROM messages WHERE conversation_id = %s",
        (conversation_id,),
    ).fetchone()
    last = 0 if row is None else int(row[0])
    if update.messages:
        with db.cursor() as cur:
            cur.executemany(
                "INSERT INTO messages (conversation_id, position, run_id, message)"
                " VALUES (%s, %s, %s, %s)",
                [
                    (conversation_id, last + n, run_id, m.model_dump_json(exclude_defaults=True))
                    for n, m in enumerate(update.messages, 1)
                ],
            )
    if update.pending:
        db.execute(
            "INSERT INTO pending_calls (conversation_id, run_id, calls) VALUES (%s, %s, %s)"
            " ON CONFLICT (conversation_id) DO UPDATE"
            " SET run_id = EXCLUDED.run_id, calls = EXCLUDED.calls",
            (conversation_id, run_id, _PENDING.dump_json(update.pending).decode()),
        )
    else:
        db.execute("DELETE FROM pending_calls WHERE conversation_id = %s", (conversation_id,))
