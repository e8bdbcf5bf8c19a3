"""The Serve replica a client streams through is killed (SIGKILL) mid-stream; Serve starts a
successor, and the client resumes there with `Last-Event-ID`: no gap, no duplicate, `[DONE]`.

A run lives in its own detached actor, not in the replica: the contract (docs/api.md) says a
background run goes on without any client and can be re-joined with `GET /v1/runs/{id}/stream`
from any replica, so this is what is tested. (A foreground run is promised a cancel when its
client leaves; a replica that dies leaves nobody to notice the connection drop, so the API
promises nothing about it and this test does not rely on either outcome.)

This kills the session's shared replica: the test waits for the successor to answer `/healthz`
before it returns, and runs after every other test (`last`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import httpx
import pytest
import ray

from rayruns.actors.client import RegistryClient
from rayruns.serve_app.settings import Settings
from tests.conftest import assert_well_formed, body, collect, frames, open_sse, wait_terminal
from tests.sse_client import Event

WORDS = " ".join(f"word{i}" for i in range(80))


def replica_names(app_name: str) -> list[str]:
    """The named replica actors of the app's ingress deployment (Serve's namespace)."""
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve"
        and a["name"].startswith("SERVE_REPLICA::")
        and f"{app_name}#RunsIngress#" in a["name"]
    )


async def replica_pid(name: str) -> int:
    """The process of a replica actor, asked of the actor itself."""
    handle = ray.get_actor(name, namespace="serve")
    pid: int = await handle.__ray_call__.remote(lambda _self: os.getpid())
    return pid


async def healthy_successor(base_url: str, app_name: str, old: str) -> str:
    """Polls until the app answers `/healthz` through a replica other than the killed one
    (Serve's controller notices the death and starts a successor on its own schedule)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        for _ in range(600):
            names = replica_names(app_name)
            if names and old not in names:
                try:
                    answer = await client.get("/healthz")
                except httpx.HTTPError:
                    answer = None
                if answer is not None and answer.status_code == 200:
                    return names[0]
            await asyncio.sleep(0.2)
    raise AssertionError(f"no healthy successor of {old}: replicas {replica_names(app_name)}")


async def read_until_broken(stream: Any) -> list[Event]:
    """What the client still gets once its replica is gone: the stream breaks or ends, never
    with `[DONE]` (the run has seconds left)."""
    with contextlib.suppress(httpx.HTTPError):
        await stream.rest()
    return list(stream.seen)


@pytest.mark.last
@pytest.mark.timeout(300)
async def test_replica_killed_mid_stream_resume_on_successor(
    base_url: str, http: httpx.AsyncClient, registry: RegistryClient, settings: Settings
) -> None:
    app_name = settings.serve.app_name
    [old] = replica_names(app_name)
    request = body(WORDS, background=True, provider_options={"delay_s": 0.1})
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=request)
    run_id = stream.run_id
    try:
        while len(frames(stream.seen)) < 5:
            assert not (await stream.next_frame()).done
        os.kill(await replica_pid(old), signal.SIGKILL)
        before = await read_until_broken(stream)
    finally:
        await cm.__aexit__(None, None, None)
    assert not any(e.done for e in before), "the run had seconds left: no [DONE] yet"
    first = frames(before)
    assert len(first) >= 5

    new = await healthy_successor(base_url, app_name, old)
    assert new != old

    last_seen = str(first[-1]["seq_id"])
    rest = await collect(
        http, "GET", f"/v1/runs/{run_id}/stream", headers={"Last-Event-ID": last_seen}
    )
    both = [e for e in before if e.id_field_seen] + rest
    assert_well_formed(both)  # ids consecutive from 1 across the two: no gap, no duplicate
    assert frames(both)[0]["seq_id"] == 1
    text = "".join(f["content"] for f in frames(both) if f["message_type"] == "assistant_message")
    assert text == WORDS

    run = await wait_terminal(registry, run_id, timeout_s=60)
    assert (run.status, run.stop_reason) == ("completed", "end_turn"), run
    answer = await http.get(f"/v1/runs/{run_id}")
    assert answer.json()["status"] == "completed"
