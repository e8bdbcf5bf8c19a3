"""Which database holds the registry's records and keys: the one place that chooses.

`open_database(settings)` returns the SQLite file at RAYRUNS_DB_PATH (the embedded default) or,
with RAYRUNS_DB_URL set, a PostgreSQL database. Either opens a run store (`RunStorage`: records,
logs, conversations; one per database at a time) and key stores (`KeyStorage`); the registry,
`rayruns serve` and `rayruns keys` use only these interfaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rayruns.actors.conversation import PendingCall
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.keys import AuthCheck, KeyInfo, KeyStore
from rayruns.actors.records import Run, RunStatus
from rayruns.actors.settings import ActorSettings
from rayruns.actors.store import LOCK_WAIT_S, HistoryUpdate, RunStore
from rayruns.providers.base import Message


class RunStorage(Protocol):
    """Run records, frame logs and conversations (actors/store.py documents each method)."""

    def close(self) -> None: ...
    def insert(self, run: Run, actor_name: str | None) -> None: ...
    def set_actor(self, run_id: str, actor_name: str) -> None: ...
    def set_running(self, run: Run) -> bool: ...
    def finish(
        self,
        run: Run,
        frames: list[LoggedFrame] | None,
        retention_s: float,
        stream_endings: list[dict[str, Any]],
        history: HistoryUpdate | None = None,
    ) -> bool: ...
    def close_wait(self, conversation_id: str, run_id: str, messages: list[Message]) -> None: ...
    def history(self, conversation_id: str) -> list[tuple[str, Message]]: ...
    def pending(self, conversation_id: str) -> tuple[str | None, list[PendingCall]]: ...
    def conversation_exists(self, conversation_id: str) -> bool: ...
    def get(self, run_id: str) -> Run | None: ...
    def unfinished(self) -> list[tuple[Run, str | None]]: ...
    def query(
        self,
        *,
        conversation_id: str | None,
        status: RunStatus | None,
        limit: int,
        tenant: str | None = None,
    ) -> list[Run]: ...
    def frames(
        self, run_id: str, after_seq: int = 0, limit: int = -1
    ) -> list[LoggedFrame] | None: ...
    def stream_endings(self, run_id: str) -> list[dict[str, Any]] | None: ...
    def purge_expired_logs(self) -> int: ...
    def purge_records(self, retention_s: float) -> int: ...


class KeyStorage(Protocol):
    """API keys and their tenants (actors/keys.py)."""

    def close(self) -> None: ...
    def add(self, name: str, tenant: str | None = None) -> str: ...
    def revoke(self, name: str) -> KeyInfo: ...
    def get(self, name: str) -> KeyInfo | None: ...
    def list(self) -> list[KeyInfo]: ...
    def any_active(self) -> bool: ...
    def check(self, key_hash: str | None) -> AuthCheck: ...


class Database(Protocol):
    @property
    def where(self) -> str:
        """The database for messages: a path, or a URL without its password."""
        ...

    def run_store(self, owner: str = "", lock_wait_s: float | None = None) -> RunStorage:
        """The registry's store; waits up to `lock_wait_s` (None: the database's own default)
        for a previous registry to let go, else raises StoreLocked."""
        ...

    def key_store(self) -> KeyStorage: ...


@dataclass(frozen=True)
class SqliteDatabase:
    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    def run_store(self, owner: str = "", lock_wait_s: float | None = None) -> RunStorage:
        return RunStore(self.path, owner, LOCK_WAIT_S if lock_wait_s is None else lock_wait_s)

    def key_store(self) -> KeyStorage:
        return KeyStore(self.path)


@dataclass(frozen=True)
class PostgresDatabase:
    url: str

    @property
    def where(self) -> str:
        _need_psycopg()
        from rayruns.actors.pg_schema import redacted

        return redacted(self.url)

    def run_store(self, owner: str = "", lock_wait_s: float | None = None) -> RunStorage:
        _need_psycopg()
        from rayruns.actors.pg_store import PG_LOCK_WAIT_S, PgRunStore

        return PgRunStore(self.url, owner, PG_LOCK_WAIT_S if lock_wait_s is None else lock_wait_s)

    def key_store(self) -> KeyStorage:
        _need_psycopg()
        from rayruns.actors.pg_keys import PgKeyStore

        return PgKeyStore(self.url)


def _need_psycopg() -> None:
    # Imported only here: the PostgreSQL driver is an extra, and SQLite needs none of it.
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "RAYRUNS_DB_URL is set but psycopg is not installed: pip install 'rayruns[postgres]'"
        ) from None


def open_database(settings: ActorSettings) -> Database:
    """PostgreSQL when RAYRUNS_DB_URL is set, else the SQLite file at RAYRUNS_DB_PATH."""
    if settings.db_url is not None:
        return PostgresDatabase(str(settings.db_url))
    return SqliteDatabase(settings.resolved_db_path())
