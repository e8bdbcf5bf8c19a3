"""The PostgreSQL store across processes: records outlive the process that wrote them, one
registry per database however the holder dies, a lost connection, `rayruns keys` with a URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from rayruns.actors.database import PostgresDatabase
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.keys import hash_key
from rayruns.actors.records import Run, Usage, utcnow
from rayruns.actors.settings import ActorSettings
from rayruns.actors.store import StoreLocked
from tests.postgres_server import PostgresServer

# A registry's store in a process of its own: the URL in RAYRUNS_DB_URL, picked by the factory.
_WRITER = """
import sys
from rayruns.actors.database import open_database
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.records import Run, Usage, utcnow
from rayruns.actors.settings import ActorSettings

store = open_database(ActorSettings()).run_store("writer process")
run = Run(id=sys.argv[1], status="created", model="fake/echo", conversation_id="c", tenant="t",
          created_at=utcnow())
store.insert(run, "actor-w")
done = run.model_copy(update={"status": "completed", "stop_reason": "end_turn",
                              "usage": Usage(step_count=2), "completed_at": utcnow()})
assert store.finish(done, [LoggedFrame(1, "assistant_message", '{"text":"hi"}')], 3600, [])
if sys.argv[2] == "hold":
    print("holding", flush=True)
    sys.stdin.read()  # until killed
store.close()
"""


def _writer(url: str, run_id: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, run_id, mode],
        env={**os.environ, "RAYRUNS_DB_URL": url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_record_written_by_one_process_is_read_by_a_fresh_one(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    run_id = f"run-{1:032x}"
    writer = _writer(url, run_id, "exit")
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    database = PostgresDatabase(url)
    store = database.run_store("reader")
    record = store.get(run_id)
    assert record is not None and record.status == "completed" and record.tenant == "t"
    assert record.usage == Usage(step_count=2)
    assert store.frames(run_id) == [LoggedFrame(1, "assistant_message", '{"text":"hi"}')]
    assert [r.id for r in store.query(conversation_id="c", status=None, limit=5, tenant="t")] == [
        run_id
    ]
    assert store.unfinished() == []
    store.close()


def test_a_killed_holder_releases_the_database(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    holder = _writer(url, f"run-{2:032x}", "hold")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n", holder.stderr.read()  # type: ignore[union-attr]
        with pytest.raises(StoreLocked) as refused:
            PostgresDatabase(url).run_store("a second registry", lock_wait_s=0)
        assert f"writer process, pid {holder.pid}" in str(refused.value)
        assert "RAYRUNS_DB_URL" in str(refused.value)
        holder.send_signal(signal.SIGKILL)  # no close(): the server ends its session
        holder.wait(timeout=30)
        # The server notices the dead connection on its own; the store waits for the lock.
        store = PostgresDatabase(url).run_store("the next registry", lock_wait_s=30)
        assert store.get(f"run-{2:032x}") is not None
        store.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def _end_the_registrys_session(url: str) -> None:
    """What a database restart does to the registry: its session ends under it."""
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
        ).fetchall()
    assert killed == [(True,)], "the store's session held the registry lock"


def test_a_lost_connection_is_replaced_and_the_lock_taken_again(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    database = PostgresDatabase(url)
    store = database.run_store("registry")
    record = Run(id=f"run-{3:032x}", status="created", model="fake/echo", created_at=utcnow())
    _end_the_registrys_session(url)
    store.insert(record, None)  # repeated on a new connection, which takes the lock again
    with pytest.raises(StoreLocked):
        database.run_store("another", lock_wait_s=0)
    _end_the_registrys_session(url)
    assert store.get(record.id) == record  # reads are repeated too
    _end_the_registrys_session(url)
    running = record.model_copy(update={"status": "running"})
    with pytest.raises(psycopg.OperationalError):
        store.set_running(running)  # a guarded write is not: it may have committed
    assert store.set_running(running)  # the next call has a new connection
    store.close()


def test_keys_cli_with_a_url(postgres: PostgresServer) -> None:
    url = postgres.new_database()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rayruns.serve_app", "keys", *args],
            env={**os.environ, "RAYRUNS_DB_URL": url, "RAYRUNS_DB_PATH": "/nonexistent/x.db"},
            capture_output=True,
            text=True,
            timeout=120,
        )

    added = cli("add", "ops", "--tenant", "team-ops")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("rr-")
    assert f"127.0.0.1:{postgres.port}" in added.stderr, "says which database"
    keys = PostgresDatabase(url).key_store()
    assert keys.check(hash_key(key)).tenant == "team-ops"
    with psycopg.connect(url) as db:
        dump = db.execute("SELECT * FROM api_keys").fetchall()
    assert key not in repr(dump), "only its hash is stored"
    listed = cli("list")
    assert listed.returncode == 0 and "team-ops" in listed.stdout
    assert cli("add", "ops").returncode == 2
    assert cli("revoke", "ops").returncode == 0
    assert keys.check(hash_key(key)).tenant is None
    keys.close()


def test_keys_cli_names_an_unreachable_database_without_its_password() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rayruns.serve_app", "keys", "list"],
        env={**os.environ, "RAYRUNS_DB_URL": "postgresql://ops:s3cret-pw@127.0.0.1:1/rayruns"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "cannot connect to the run database postgresql://ops@127.0.0.1:1/rayruns" in proc.stderr
    assert "s3cret-pw" not in proc.stderr and "Traceback" not in proc.stderr


def test_settings_take_a_postgresql_url_only() -> None:
    assert ActorSettings(db_url="postgresql://u@h:5432/d").db_url is not None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="postgresql"):
        ActorSettings(db_url="mysql://u@h/d")  # type: ignore[arg-type]


def test_the_registrys_session_is_probed_so_a_vanished_holder_lets_go(
    postgres: PostgresServer,
) -> None:
    url = postgres.new_database()
    store: Any = PostgresDatabase(url).run_store("registry")
    names = ("tcp_keepalives_idle", "tcp_user_timeout", "statement_timeout")
    assert {n: store._db.execute(f"SHOW {n}").fetchone()[0] for n in names} == {
        "tcp_keepalives_idle": "5",
        "tcp_user_timeout": "10000",
        "statement_timeout": "30s",
    }
    store.close()
    # A URL with options of its own: they win.
    own: Any = PostgresDatabase(url + "?options=-c%20statement_timeout%3D7000").run_store("r")
    assert own._db.execute("SHOW statement_timeout").fetchone()[0] == "7s"
    assert own._db.execute("SHOW tcp_keepalives_idle").fetchone()[0] == "5"
    own.close()


def test_serve_on_the_network_with_an_unreachable_database_refuses_clearly() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rayruns.serve_app", "serve", "--host", "0.0.0.0"],
        env={**os.environ, "RAYRUNS_DB_URL": "postgresql://ops:s3cret-pw@127.0.0.1:1/rayruns"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot tell whether an API key exists" in proc.stderr
    assert "postgresql://ops@127.0.0.1:1/rayruns" in proc.stderr and "s3cret-pw" not in proc.stderr
