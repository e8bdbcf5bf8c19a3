"""Limits: live runs (server-wide and per tenant) before any process is spawned, a run's age,
frames and bytes, and the size of `metadata`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import ray

from rayruns.actors.batch import BatchEngine, BatchItem
from rayruns.actors.handle import RunResult
from rayruns.actors.limits import RunLimits
from rayruns.actors.remote import new_run_actor
from rayruns.actors.runs import Runs
from rayruns.actors.spec import METADATA_MAX_BYTES, RunSpec
from rayruns.serve_app.settings import Settings
from tests.conftest import (
    SECURED_MAX_LIVE,
    SECURED_MAX_PER_TENANT,
    Secured,
    body,
    collect,
    frames,
)

HANGING = body("hold", background=True, provider_options={"hang_after": 0})


async def _start(client: httpx.AsyncClient, json: dict[str, Any]) -> httpx.Response:
    """POST a run and keep only the answer's head: a background run goes on without us."""
    async with client.stream("POST", "/v1/runs", json=json) as r:
        if r.status_code != 200:
            await r.aread()
        return r


def _assert_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.status_code
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["detail"].startswith("too many live runs")


async def _cancel_all(clients: dict[str, httpx.AsyncClient], runs: dict[str, str]) -> None:
    answers = await asyncio.gather(
        *(clients[tenant].post(f"/v1/runs/{run_id}/cancel") for run_id, tenant in runs.items())
    )
    assert all(a.json()["status"] == "cancelled" for a in answers)


async def _refused_beyond(secured: Secured, count: int) -> None:
    """Until the registry has refused more than `count` runs (it happens inside the registry,
    with nothing to await from outside: its counter is watched, with a deadline)."""
    for _ in range(600):
        if (await _stats(secured))["refused_runs"] > count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no run met the limit")


async def _stats(secured: Secured) -> dict[str, Any]:
    stats: dict[str, Any] = await secured.registry.stats()
    return stats


@pytest.mark.timeout(600)
async def test_a_burst_of_60_background_runs_is_capped_at_the_live_limit(
    secured: Secured,
) -> None:
    assert (await _stats(secured))["live_runs"] == 0
    tenants = [f"burst-{i}" for i in range(6)]  # 6 x 4 per tenant > 20: the server cap binds
    clients = {
        t: secured.client(secured.add_key(f"{t}-{uuid.uuid4().hex[:6]}", t)) for t in tenants
    }
    accepted: dict[str, str] = {}  # run id -> tenant
    try:
        order = [tenants[i % len(tenants)] for i in range(60)]
        answers = await asyncio.gather(*(_start(clients[t], HANGING) for t in order))
        for r, t in zip(answers, order, strict=True):
            if r.status_code == 200:
                accepted[r.headers["x-run-id"]] = t
            else:
                _assert_limited(r)
        assert len(accepted) == SECURED_MAX_LIVE
        for t in tenants:
            assert list(accepted.values()).count(t) <= SECURED_MAX_PER_TENANT

        stats = await _stats(secured)
        assert stats["peak_live_runs"] <= SECURED_MAX_LIVE
        assert stats["live_runs"] == SECURED_MAX_LIVE
        busy = (await secured.registry.actor_names())["busy"]
        assert len(busy) == SECURED_MAX_LIVE
        async with secured.client(None) as anyone:
            assert (await anyone.get("/healthz")).status_code == 200

        # Chat is refused in OpenAI's shape.
        chat = await clients[tenants[0]].post(
            "/v1/chat/completions",
            json={"model": "fake/echo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 429 and int(chat.headers["retry-after"]) >= 1
        assert chat.json()["error"]["type"] == "rate_limit_error"
        assert chat.json()["error"]["code"] == "rate_limit_exceeded"

        # A batch stopped while it waits for room reports its item cancelled, never started.
        refused_so_far = (await _stats(secured))["refused_runs"]
        stopped: list[RunResult] = []
        engine = BatchEngine(secured.registry, 1, on_result=lambda _, r: stopped.append(r))
        item = BatchItem(0, "waits", RunSpec.from_body(body("never runs")))
        waiting = asyncio.create_task(engine.run(iter([item])))
        await _refused_beyond(secured, refused_so_far)
        engine.stopping.set()
        await waiting
        assert [(r.id, r.status, r.run_id) for r in stopped] == [("waits", "cancelled", None)]

        # A batch through the Python API waits for room instead of failing its runs.
        refused_so_far = (await _stats(secured))["refused_runs"]
        requests = [body(f"batch {i}") for i in range(3)]
        batch = asyncio.create_task(Runs(secured.registry).run_batch(requests, concurrency=3))
        await _refused_beyond(secured, refused_so_far)
        assert not batch.done()
        await _cancel_all(clients, accepted)
        accepted.clear()
        results = await asyncio.wait_for(batch, timeout=120)
        assert [r.status for r in results] == ["completed"] * 3
        assert [r.text for r in results] == [f"batch {i}" for i in range(3)]
        assert (await _stats(secured))["peak_live_runs"] <= SECURED_MAX_LIVE
        again = await clients[tenants[0]].post("/v1/runs", json=body("after", stream=False))
        assert again.status_code == 200 and again.json()["run"]["status"] == "completed"
    finally:
        await _cancel_all(clients, accepted)
        for c in clients.values():
            await c.aclose()


async def test_a_tenant_at_its_limit_gets_429_while_another_still_runs(secured: Secured) -> None:
    full = secured.client(secured.add_key(f"full-{uuid.uuid4().hex[:6]}"))
    other = secured.client(secured.add_key(f"other-{uuid.uuid4().hex[:6]}"))
    held: list[str] = []
    try:
        for _ in range(SECURED_MAX_PER_TENANT):
            r = await _start(full, HANGING)
            assert r.status_code == 200
            held.append(r.headers["x-run-id"])
        refused = await _start(full, HANGING)
        _assert_limited(refused)
        assert f"this tenant allows {SECURED_MAX_PER_TENANT}" in refused.json()["detail"]
        ok = await other.post("/v1/runs", json=body("room for me", stream=False))
        assert ok.status_code == 200 and ok.json()["run"]["status"] == "completed"
    finally:
        for run_id in held:
            assert (await full.post(f"/v1/runs/{run_id}/cancel")).json()["status"] == "cancelled"
        await full.aclose()
        await other.aclose()


@pytest.fixture
async def probe_actor(settings: Settings) -> Any:
    """A run actor outside any registry (named apart from the pool's), ended after the test."""
    actor = new_run_actor(f"limits-probe-{uuid.uuid4().hex}", settings.actors, settings.providers)
    await actor.ping.remote()
    yield actor
    ray.kill(actor, no_restart=True)


async def _run_on(actor: Any, text: str, limits: RunLimits, **options: Any) -> Any:
    run_id = f"run-{uuid.uuid4().hex}"
    spec = RunSpec.model_validate(
        {"messages": [{"role": "user", "content": text}], "provider_options": options}
    )
    await actor.start.remote(run_id, spec, limits)
    return await actor.result.remote(run_id)


async def test_a_run_past_its_age_limit_ends_as_run_timeout(probe_actor: Any) -> None:
    result = await _run_on(probe_actor, "one two three", RunLimits(max_run_s=0.5), hang_after=1)
    assert result.outcome.stop_reason == "error"
    assert result.outcome.status == "failed"
    assert result.outcome.error.error_type == "run_timeout"
    assert "RAYRUNS_MAX_RUN_S" in result.outcome.error.message
    kinds = [f.message_type for f in result.frames]
    assert kinds == ["assistant_message", "error", "stop_reason", "usage_statistics"]


async def test_a_run_past_its_frame_cap_ends_as_run_output_limit(probe_actor: Any) -> None:
    words = " ".join(f"w{i}" for i in range(30))
    result = await _run_on(probe_actor, words, RunLimits(max_frames=10))
    assert result.outcome.error.error_type == "run_output_limit"
    assert "10 frames" in result.outcome.error.message
    kinds = [f.message_type for f in result.frames]
    assert kinds == ["assistant_message"] * 10 + ["error", "stop_reason", "usage_statistics"]


async def test_a_run_past_its_byte_cap_ends_as_run_output_limit(probe_actor: Any) -> None:
    words = " ".join("x" * 500 for _ in range(40))  # ~20 kB of text in 40 frames
    result = await _run_on(probe_actor, words, RunLimits(max_bytes=8192))
    assert result.outcome.error.error_type == "run_output_limit"
    assert "8192 bytes" in result.outcome.error.message
    content = [f for f in result.frames if f.message_type == "assistant_message"]
    assert 0 < len(content) < 40 and sum(len(f.data) for f in content) <= 8192


async def test_metadata_over_16_kib_is_refused(http: httpx.AsyncClient) -> None:
    big = {"blob": "x" * METADATA_MAX_BYTES}
    r = await http.post("/v1/runs", json=body("hi", metadata=big))
    assert r.status_code == 422 and "metadata" in r.json()["detail"]
    assert f"at most {METADATA_MAX_BYTES}" in r.json()["detail"]
    chat = await http.post(
        "/v1/chat/completions",
        json={
            "model": "fake/echo",
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": big,
        },
    )
    assert chat.status_code == 400 and "metadata" in chat.json()["error"]["message"]
    fits = {"blob": "x" * (METADATA_MAX_BYTES - 100)}
    ok = frames(await collect(http, "POST", "/v1/runs", json=body("hi", metadata=fits)))
    assert ok[-2]["stop_reason"] == "end_turn"
