"""The PostgreSQL database's tables, and how the stores connect to it.

The layout mirrors the SQLite file's (actors/store.py, actors/keys.py) column for column, so a
record reads the same from either; times are seconds since the epoch as in SQLite.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

# The session-level advisory lock one registry holds on its database (any constant: it names
# "the registry of this database" to every rayruns process that connects to it).
LOCK_KEY = 0x7261797275_6E73  # "rayruns"
# Creating tables from two processes at once can fail on PostgreSQL's catalog even with IF NOT
# EXISTS (a registry opening as `rayruns keys` runs): schema changes take this lock first.
SCHEMA_LOCK_KEY = LOCK_KEY + 1
CONNECT_TIMEOUT_S = 10
# Per-session settings any user may set, asked for on every connection; options in the URL come
# after these and win. The server probes the session (idle 5 s, then 3 probes 2 s apart;
# unacknowledged data gives up after 10 s), and a statement may take 30 s, as SQLite's busy
# timeout: the registry's one store thread never waits on the database for good.
_SESSION = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
    " -c tcp_user_timeout=10000 -c statement_timeout=30000"
)
DEAD_SESSION_S = 15.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    conversation_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    actor_name TEXT,
    record TEXT NOT NULL,
    stream_endings TEXT,
    tenant TEXT,
    ended_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_conversation ON runs (conversation_id, created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at DESC);
CREATE INDEX IF NOT EXISTS runs_by_end ON runs (ended_at) WHERE ended_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, created_at DESC);
CREATE TABLE IF NOT EXISTS log_expiry (
    run_id TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS log_expiry_by_time ON log_expiry (expires_at);
CREATE TABLE IF NOT EXISTS log_frames (
    run_id TEXT NOT NULL,
    seq_id BIGINT NOT NULL,
    message_type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq_id)
);
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
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS api_keys_live ON api_keys (revoked_at);
CREATE TABLE IF NOT EXISTS registry_owner (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL
);
"""


class DatabaseUnreachable(RuntimeError):
    """The PostgreSQL server at RAYRUNS_DB_URL refused or did not answer."""


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection: each statement commits alone unless in `transaction()`.

    The server probes the session often, so that a registry whose node vanished without closing
    its socket loses the lock within DEAD_SESSION_S rather than the kernel's two hours."""
    given = conninfo_to_dict(url).get("options") or ""
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="rayruns",
            options=f"{_SESSION} {given}".strip(),
        )
    except psycopg.OperationalError as exc:
        # The driver's message may quote the URL: say where without the password.
        reason = str(exc).replace(url, redacted(url)).strip()
        raise DatabaseUnreachable(
            f"cannot connect to the run database {redacted(url)} (RAYRUNS_DB_URL): {reason}"
        ) from None


def create_schema(db: psycopg.Connection[Any]) -> None:
    """The tables, when missing. Checks first: opening a current database takes no lock."""
    row = db.execute("SELECT to_regclass('registry_owner') IS NOT NULL").fetchone()
    if row is not None and row[0]:
        return
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)


def redacted(url: str) -> str:
    """Where the URL points, without its password: for messages and logs."""
    params = conninfo_to_dict(url)
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{params.get('host') or ''}{port}/{params.get('dbname') or ''}"
