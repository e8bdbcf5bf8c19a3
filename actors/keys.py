"""API keys and their tenants, in the registry's SQLite file (in PostgreSQL: actors/pg_keys.py).

Only a SHA-256 of each key is stored. Keys are 256 random bits, so a fast hash is as good as a
slow one here: there is no dictionary to guess from. The `rayruns keys` command writes this table
directly (no Ray needed); the registry reads it on every check, so a key added or revoked while
the server runs counts at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_PREFIX = "rr-"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_live ON api_keys (revoked_at);
"""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class KeyCommandError(ValueError):
    """A `keys` command that cannot be done (bad name, name taken, unknown name)."""


def check_names(name: str, tenant: str | None) -> None:
    for label, value in (("name", name), ("tenant", tenant or name)):
        if not NAME_PATTERN.match(value):
            raise KeyCommandError(
                f"{label} {value!r} must be 1 to 64 letters, digits, '.', '_' or '-'"
                " (starting with a letter or digit)"
            )


def name_taken(name: str) -> KeyCommandError:
    return KeyCommandError(f"a key named {name!r} exists already (revoked keys keep their name)")


def no_such_key(name: str) -> KeyCommandError:
    return KeyCommandError(f"no key named {name!r}")


@dataclass(frozen=True)
class KeyInfo:
    name: str
    tenant: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class AuthCheck:
    """What the registry says about a presented key: are keys required, and whose is it."""

    keys_required: bool
    tenant: str | None


class KeyReads:
    """The reads both key stores share (SQLite here, PostgreSQL in actors/pg_keys.py): each
    store gives its placeholder and a way to run one statement."""

    _mark = "?"
    _columns = "name, tenant, created_at, revoked_at"

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        raise NotImplementedError

    def get(self, name: str) -> KeyInfo | None:
        row = self._execute(
            f"SELECT {self._columns} FROM api_keys WHERE name = {self._mark}", (name,)
        ).fetchone()
        return None if row is None else KeyInfo(*row)

    def list(self) -> list[KeyInfo]:
        rows = self._execute(f"SELECT {self._columns} FROM api_keys ORDER BY created_at")
        return [KeyInfo(*row) for row in rows.fetchall()]

    def any_active(self) -> bool:
        row = self._execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1")
        return row.fetchone() is not None

    def check(self, key_hash: str | None) -> AuthCheck:
        """Whether keys are required, and the tenant of the active key with this hash."""
        tenant = None
        if key_hash is not None:
            row = self._execute(
                f"SELECT tenant FROM api_keys WHERE key_hash = {self._mark} AND revoked_at IS NULL",
                (key_hash,),
            ).fetchone()
            tenant = None if row is None else str(row[0])
        return AuthCheck(keys_required=tenant is not None or self.any_active(), tenant=tenant)


class KeyStore(KeyReads):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not tied to its opening thread: the registry uses it from a worker thread of its own.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, name: str, tenant: str | None = None) -> str:
        """A new key for `name` (tenant: `tenant`, else the name); returns the key itself."""
        check_names(name, tenant)
        key = new_key()
        try:
            self._db.execute(
                "INSERT INTO api_keys (name, tenant, key_hash, created_at) VALUES (?, ?, ?, ?)",
                (name, tenant or name, hash_key(key), time.time()),
            )
        except sqlite3.IntegrityError:
            raise name_taken(name) from None
        return key

    def revoke(self, name: str) -> KeyInfo:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (time.time(), name),
            )
        info = self.get(name)
        if info is None:
            raise no_such_key(name)
        return info

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        return self._db.execute(sql, params)
