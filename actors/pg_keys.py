"""API keys and their tenants in PostgreSQL (RAYRUNS_DB_URL): the same table and rules as the
SQLite `KeyStore` (actors/keys.py). It takes no registry lock: `rayruns keys` writes while the
registry runs, and the registry reads on every check."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from rayruns.actors.keys import (
    AuthCheck,
    KeyInfo,
    check_names,
    hash_key,
    name_taken,
    new_key,
    no_such_key,
)
from rayruns.actors.pg_schema import connect, create_schema, redacted

_COLUMNS = "name, tenant, created_at, revoked_at"


class PgKeyStore:
    def __init__(self, url: str) -> None:
        self.where = redacted(url)
        self._url = url
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        db = connect(self._url)
        try:
            create_schema(db)
        except BaseException:
            db.close()
            raise
        return db

    @property
    def _db(self) -> psycopg.Connection[Any]:
        """The connection; a new one once it broke (the server restarted)."""
        if self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        self._conn.close()

    def add(self, name: str, tenant: str | None = None) -> str:
        """A new key for `name` (tenant: `tenant`, else the name); returns the key itself."""
        check_names(name, tenant)
        key = new_key()
        try:
            self._db.execute(
                "INSERT INTO api_keys (name, tenant, key_hash, created_at) VALUES (%s, %s, %s, %s)",
                (name, tenant or name, hash_key(key), time.time()),
            )
        except psycopg.errors.UniqueViolation:
            raise name_taken(name) from None
        return key

    def revoke(self, name: str) -> KeyInfo:
        self._db.execute(
            "UPDATE api_keys SET revoked_at = %s WHERE name = %s AND revoked_at IS NULL",
            (time.time(), name),
        )
        info = self.get(name)
        if info is None:
            raise no_such_key(name)
        return info

    def get(self, name: str) -> KeyInfo | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE name = %s",
            (name,),
        ).fetchone()
        return None if row is None else KeyInfo(*row)

    def list(self) -> list[KeyInfo]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at").fetchall()
        return [KeyInfo(*row) for row in rows]

    def any_active(self) -> bool:
        row = self._db.execute("SELECT 1 FROM api_keys WHERE revoked_at IS NULL LIMIT 1")
        return row.fetchone() is not None

    def check(self, key_hash: str | None) -> AuthCheck:
        """Whether keys are required, and the tenant of the active key with this hash."""
        tenant = None
        if key_hash is not None:
            row = self._db.execute(
                "SELECT tenant FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
                (key_hash,),
            ).fetchone()
            tenant = None if row is None else str(row[0])
        return AuthCheck(keys_required=tenant is not None or self.any_active(), tenant=tenant)
