"""API keys and tenants, against the secured Serve app (tests/conftest.py `secured`)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rayruns.actors.keys import KeyStore
from rayruns.serve_app.cli import open_to_network
from rayruns.serve_app.settings import Settings
from tests.conftest import Secured, body, collect, frames, wait_terminal

CHAT = {"model": "fake/echo", "messages": [{"role": "user", "content": "hi there"}]}


def tenant_key(secured: Secured, tenant: str | None = None) -> str:
    return secured.add_key(f"k-{uuid.uuid4().hex[:12]}", tenant)


def assert_unauthorized(r: httpx.Response, *, chat: bool = False) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    if chat:
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert "API key" in error["message"]
    else:
        assert "API key" in r.json()["detail"]


ROUTES = [
    ("GET", "/v1/runs", None),
    ("POST", "/v1/runs", body("hi")),
    ("GET", "/v1/runs/run-x", None),
    ("GET", "/v1/runs/run-x/stream", None),
    ("POST", "/v1/runs/run-x/cancel", None),
]


@pytest.mark.parametrize("presented", ["none", "wrong", "malformed", "revoked"])
async def test_every_route_needs_a_valid_key(secured: Secured, presented: str) -> None:
    headers: dict[str, str] = {}
    if presented == "wrong":
        headers["Authorization"] = "Bearer rr-" + "x" * 43
    elif presented == "malformed":
        headers["Authorization"] = "Basic dXNlcjpwYXNz"
    elif presented == "revoked":
        name = f"revoked-{uuid.uuid4().hex[:8]}"
        key = secured.add_key(name)
        async with secured.client(key) as c:
            assert (await c.get("/v1/runs")).status_code == 200
        secured.keys.revoke(name)
        headers["Authorization"] = f"Bearer {key}"
    async with secured.client(None, headers=headers) as c:
        for method, path, json_body in ROUTES:
            assert_unauthorized(await c.request(method, path, json=json_body))
        assert_unauthorized(await c.post("/v1/chat/completions", json=CHAT), chat=True)
        health = await c.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}


async def test_a_key_sees_its_runs_and_another_tenant_gets_404_everywhere(
    secured: Secured,
) -> None:
    alice, bob = tenant_key(secured, "alice-t"), tenant_key(secured, "bob-t")
    async with secured.client(alice) as a, secured.client(bob) as b:
        request = body("one two", background=True, stream=False, metadata={"who": "alice"})
        made = await a.post("/v1/runs", json=request)
        assert made.status_code == 200, made.text
        run = made.json()["run"]
        assert run["tenant"] == "alice-t" and run["status"] == "completed"
        run_id = run["id"]

        assert (await a.get(f"/v1/runs/{run_id}")).json()["id"] == run_id
        got = frames(await collect(a, "GET", f"/v1/runs/{run_id}/stream"))
        assert got[-2]["stop_reason"] == "end_turn"

        for method, path in [
            ("GET", f"/v1/runs/{run_id}"),
            ("GET", f"/v1/runs/{run_id}/stream"),
            ("POST", f"/v1/runs/{run_id}/cancel"),
        ]:
            r = await b.request(method, path)
            assert r.status_code == 404 and r.json() == {"detail": f"no run {run_id!r}"}
        # What bob gets for alice's run is what anyone gets for a run that does not exist.
        assert (await b.get("/v1/runs/run-none")).json() == {"detail": "no run 'run-none'"}

        assert [r["id"] for r in (await a.get("/v1/runs")).json()] == [run_id]
        assert (await b.get("/v1/runs")).json() == []
        assert (await b.get("/v1/runs", params={"status": "completed"})).json() == []


async def test_a_live_run_is_hidden_from_other_tenants_and_cancel_cannot_reach_it(
    secured: Secured,
) -> None:
    alice, bob = tenant_key(secured, "alice-live"), tenant_key(secured, "bob-live")
    async with secured.client(alice) as a, secured.client(bob) as b:
        hanging = body("wait", background=True, provider_options={"hang_after": 0})
        async with a.stream("POST", "/v1/runs", json=hanging) as r:
            assert r.status_code == 200
            run_id = r.headers["x-run-id"]
        assert (await b.post(f"/v1/runs/{run_id}/cancel")).status_code == 404
        assert (await b.get(f"/v1/runs/{run_id}/stream")).status_code == 404
        run = await secured.registry.get(run_id)
        assert run is not None and run.status == "running"
        cancelled = await a.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.json()["status"] == "cancelled"


async def test_conversations_are_per_tenant(secured: Secured) -> None:
    alice, bob = tenant_key(secured, "alice-conv"), tenant_key(secured, "bob-conv")
    hanging = body(
        "wait", background=True, conversation_id="shared", provider_options={"hang_after": 0}
    )
    run_ids = []
    async with secured.client(alice) as a, secured.client(bob) as b:
        for c in (a, b):  # the same conversation id, two tenants: two conversations
            async with c.stream("POST", "/v1/runs", json=hanging) as r:
                assert r.status_code == 200
                run_ids.append(r.headers["x-run-id"])
        busy = await a.post("/v1/runs", json=hanging)
        assert busy.status_code == 409 and busy.json()["run_id"] == run_ids[0]
        listed = await b.get("/v1/runs", params={"conversation_id": "shared"})
        assert [r["id"] for r in listed.json()] == [run_ids[1]]
        for c, run_id in zip((a, b), run_ids, strict=True):
            assert (await c.post(f"/v1/runs/{run_id}/cancel")).json()["status"] == "cancelled"


async def test_the_openai_client_with_a_key(secured: Secured) -> None:
    key = tenant_key(secured, "openai-user")
    client = openai.AsyncOpenAI(base_url=f"{secured.url}/v1", api_key=key, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="fake/echo", messages=[{"role": "user", "content": "keyed hello"}]
    )
    assert raw.parse().choices[0].message.content == "keyed hello"
    run = await wait_terminal(secured.registry, raw.headers["x-run-id"])
    assert run.tenant == "openai-user"

    stream = await client.chat.completions.create(
        model="fake/echo", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "a b c"

    wrong = openai.AsyncOpenAI(base_url=f"{secured.url}/v1", api_key="rr-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await wrong.chat.completions.create(model="fake/echo", messages=[CHAT["messages"][0]])
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


async def test_a_session_cookie_for_browsers(secured: Secured) -> None:
    key = tenant_key(secured, "browser")
    async with secured.client(None) as c:
        bad = await c.post("/v1/session", json={"api_key": "rr-not-a-key"})
        assert_unauthorized(bad)
        assert "set-cookie" not in bad.headers
        assert_unauthorized(await c.post("/v1/session"))

        opened = await c.post("/v1/session", json={"api_key": key})
        assert opened.status_code == 200 and opened.json() == {"tenant": "browser"}
        cookie = opened.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "path"} <= attributes
        assert "samesite=strict" in cookie.lower()
        assert key not in str(opened.url)

        # As EventSource does: no header, only the cookie.
        made = await c.post("/v1/runs", json=body("cookie run", background=True, stream=False))
        assert made.status_code == 200, made.text
        run_id = made.json()["run"]["id"]
        got = frames(await collect(c, "GET", f"/v1/runs/{run_id}/stream"))
        assert got[-2]["stop_reason"] == "end_turn"

        closed = await c.delete("/v1/session")
        assert closed.status_code == 200
        assert_unauthorized(await c.get(f"/v1/runs/{run_id}"))

    async with secured.client(None) as c:  # the Bearer header opens a session too
        opened = await c.post("/v1/session", headers={"Authorization": f"Bearer {key}"})
        assert opened.status_code == 200
        assert (await c.get(f"/v1/runs/{run_id}")).status_code == 200


async def test_an_open_server_needs_no_session(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/session", json={"api_key": "rr-anything"})
    assert r.status_code == 200 and r.json() == {"tenant": None}
    assert "set-cookie" not in r.headers


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAYRUNS_DB_PATH": str(db)}
    return subprocess.run(
        [sys.executable, "-m", "rayruns.serve_app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_keys_cli_adds_lists_and_revokes_while_the_server_runs(secured: Secured) -> None:
    db = secured.settings.actors.resolved_db_path()
    name = f"cli-{uuid.uuid4().hex[:8]}"
    added = _cli(db, "keys", "add", name, "--tenant", "cli-tenant")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("rr-") and len(key) > 40
    async with secured.client(key) as c:
        r = await c.post("/v1/runs", json=body("via cli key", stream=False))
        assert r.status_code == 200 and r.json()["run"]["tenant"] == "cli-tenant"

    listed = _cli(db, "keys", "list")
    assert listed.returncode == 0
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(name + " ")]
    assert "cli-tenant" in row and key not in listed.stdout
    assert key not in db.read_bytes().decode(errors="replace")  # only its hash is stored

    again = _cli(db, "keys", "add", name)
    assert again.returncode == 2 and "exists already" in again.stderr

    revoked = _cli(db, "keys", "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    async with secured.client(key) as c:
        assert_unauthorized(await c.get("/v1/runs"))
    assert _cli(db, "keys", "revoke", "no-such-key").returncode == 2


def test_serve_refuses_a_network_host_without_keys(tmp_path: Path) -> None:
    env = {**os.environ, "RAYRUNS_DB_PATH": str(tmp_path / "runs.sqlite3")}
    proc = subprocess.run(
        [sys.executable, "-m", "rayruns.serve_app", "serve", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0" in proc.stderr and "--insecure" in proc.stderr
    assert "rayruns keys add" in proc.stderr


def test_the_host_check_passes_on_loopback_with_a_key_or_insecure(tmp_path: Path) -> None:
    settings: Any = Settings.from_env()
    settings.actors.db_path = tmp_path / "runs.sqlite3"
    assert open_to_network("127.0.0.1", settings) is None
    assert open_to_network("::1", settings) is None
    assert open_to_network("localhost", settings) is None
    assert open_to_network("0.0.0.0", settings) is not None
    assert open_to_network("my-host.example", settings) is not None
    store = KeyStore(settings.actors.resolved_db_path())
    store.add("ops")
    assert open_to_network("0.0.0.0", settings) is None
    store.revoke("ops")
    assert open_to_network("0.0.0.0", settings) is not None
    store.close()
