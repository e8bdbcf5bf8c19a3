"""The API key store on its own, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from rayruns.actors.database import Database
from rayruns.actors.keys import KeyCommandError, hash_key


def test_keys_are_added_checked_and_revoked(database: Database) -> None:
    keys = database.key_store()
    assert not keys.check(None).keys_required, "no key yet: an open server"
    key = keys.add("alice", "team-a")
    assert keys.check(hash_key(key)).tenant == "team-a"
    assert keys.check(hash_key("rr-wrong")).keys_required
    assert keys.check(hash_key("rr-wrong")).tenant is None
    with pytest.raises(KeyCommandError, match="exists already"):
        keys.add("alice")
    with pytest.raises(KeyCommandError, match="must be 1 to 64"):
        keys.add("no spaces")
    bob = keys.add("bob")
    assert [(k.name, k.tenant, k.active) for k in keys.list()] == [
        ("alice", "team-a", True),
        ("bob", "bob", True),
    ]
    assert not keys.revoke("alice").active
    assert keys.check(hash_key(key)).tenant is None
    assert keys.check(hash_key(bob)).tenant == "bob"
    with pytest.raises(KeyCommandError, match="no key named"):
        keys.revoke("carol")
    keys.close()
    again = database.key_store()  # another process's view: `rayruns keys` beside the registry
    assert again.get("alice") is not None and not again.get("alice").active  # type: ignore[union-attr]
    assert again.any_active()
    again.close()


def test_a_key_store_opens_beside_the_registrys_run_store(database: Database) -> None:
    runs = database.run_store("the registry")
    keys = database.key_store()
    keys.add("ops")
    assert keys.any_active()
    keys.close()
    runs.close()
