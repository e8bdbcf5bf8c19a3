"""API keys and their tenants in PostgreSQL (RAYRUNS_DB_URL): the same table and rules as the
SQLite `KeyStore` (actors/keys.py). It takes no registry lock: `rayruns keys` writes while the
registry runs, and the registry reads on every check."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from rayruns.actors.keys import (
    KeyInfo,
    KeyReads,
    check_names,
    hash_key,
    name_taken,
    new_key,
    no_such_key,
)
from rayruns.actors.pg_schema import connect, create_schema, redacted


class PgKeyStore(KeyReads):
    _mark = "%s"

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

    def _execute(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        return self._db.execute(sql, params)
