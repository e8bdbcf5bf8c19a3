"""`rayruns keys add|list|revoke`: the server's API keys, in the registry's database.

Run it on the head node (where `RAYRUNS_DB_PATH` is the registry's file), or anywhere with the
registry's `RAYRUNS_DB_URL` (PostgreSQL); it needs no Ray. The running server notices added and
revoked keys within `RAYRUNS_AUTH_CACHE_S`.

`add NAME [--tenant T]` prints the new key alone as the last line of stdout: it is shown once and
only its hash is kept. Runs made with a key belong to its tenant (the key's name unless given).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from rayruns.actors.database import open_database
from rayruns.actors.keys import KeyCommandError, KeyInfo
from rayruns.actors.settings import ActorSettings


def add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keys",
        help="manage the server's API keys",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="read settings (RAYRUNS_DB_PATH or RAYRUNS_DB_URL) from NAME=value lines, as"
        " `rayruns serve` does",
    )
    keys = p.add_subparsers(dest="keys_command", required=True)
    add = keys.add_parser("add", help="create a key; prints it as the last line")
    add.add_argument("name", help="the key's name (letters, digits, '.', '_', '-')")
    add.add_argument("--tenant", default=None, help="whose runs it makes (default: the name)")
    keys.add_parser("list", help="every key: name, tenant, created, revoked")
    revoke = keys.add_parser("revoke", help="revoke a key; it stops working at once")
    revoke.add_argument("name")


def keys_command(args: argparse.Namespace, settings: ActorSettings) -> int:
    database = open_database(settings)
    try:
        store = database.key_store()
    except RuntimeError as exc:  # PostgreSQL unreachable, or its driver not installed
        _err(f"rayruns keys: {exc}")
        return 2
    try:
        if args.keys_command == "add":
            key = store.add(args.name, args.tenant)
            info = store.get(args.name)
            assert info is not None
            _err(f"created key {info.name!r} for tenant {info.tenant!r} in {database.where}")
            _err("it is shown once, below; only its hash is stored")
            _out(key)
        elif args.keys_command == "list":
            _out(f"{'name':<24} {'tenant':<24} {'created':<20} revoked")
            for info in store.list():
                _out(_row(info))
        elif args.keys_command == "revoke":
            info = store.revoke(args.name)
            _err(f"revoked key {info.name!r} (tenant {info.tenant!r})")
        else:
            raise AssertionError(args.keys_command)
    except KeyCommandError as exc:
        _err(f"rayruns keys: {exc}")
        return 2
    finally:
        store.close()
    return 0


def _row(info: KeyInfo) -> str:
    revoked = "-" if info.revoked_at is None else _time(info.revoked_at)
    return f"{info.name:<24} {info.tenant:<24} {_time(info.created_at):<20} {revoked}"


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
