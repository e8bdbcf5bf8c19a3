"""A real PostgreSQL server for the suite: Debian's binaries, a data directory in a temporary
directory, trust authentication on 127.0.0.1 and a unix socket beside the data.

initdb and postgres refuse to run as root, so as root both run as the `postgres` user (the
package creates it) with `runuser`; the temporary directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql


def _pg_bin() -> Path:
    """RAYRUNS_TEST_PG_BIN, else the newest of Debian's installed versions."""
    if "RAYRUNS_TEST_PG_BIN" in os.environ:
        return Path(os.environ["RAYRUNS_TEST_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
START_TIMEOUT_S = 60.0


@dataclass
class PostgresServer:
    root: Path
    port: int
    process: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: a "smart" shutdown once clients have gone
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _as_postgres() -> list[str]:
    """The prefix that runs a command as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_postgres() -> PostgresServer:
    if not (PG_BIN / "postgres").exists():
        raise RuntimeError(
            f"no PostgreSQL server binaries in {PG_BIN}: `apt-get install postgresql` (make test"
            " does), or point RAYRUNS_TEST_PG_BIN at a bin directory"
        )
    root = Path(tempfile.mkdtemp(prefix="rayruns-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    subprocess.run(
        [
            *_as_postgres(),
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - the server's stderr for its life
    process = subprocess.Popen(
        [
            *_as_postgres(),
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(root),
            "-c",
            "fsync=off",  # a test server: its data goes with the temporary directory
            "-c",
            "max_connections=200",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    server = PostgresServer(root, port, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        # pg_isready would also poll: the server has no readiness signal but its socket
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return server
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                text = (root / "server.log").read_text(errors="replace")
                server.stop()
                raise RuntimeError(f"PostgreSQL did not start:\n{text}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
