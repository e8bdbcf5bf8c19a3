"""Real provider SDKs inside run actors, against the local wire-format server."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import assert_well_formed, body, collect, frames, open_sse, wait_terminal
from tests.providers.support import assert_closed_by_client
from tests.providers.wire_servers import WireServer

VENDORS = ["openai", "anthropic", "google"]


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_vendor_run_streams_like_the_fake(http: httpx.AsyncClient, vendor: str) -> None:
    events = await collect(http, "POST", "/v1/runs", json=body(model=f"{vendor}/text-4"))
    assert_well_formed(events)
    got = frames(events)
    text = "".join(f["content"] for f in got if f["message_type"] == "assistant_message")
    assert text == "w0 w1 w2 w3 "  # the server's script for text-4
    assert got[-2]["stop_reason"] == "end_turn"
    # The server counts the prompt's words ("hello world") and the chunks it sent.
    usage = {k: got[-1][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert usage == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    ("status", "error_type"),
    [(429, "llm_rate_limit"), (401, "llm_authentication"), (400, "llm_bad_request")],
)
async def test_vendor_errors_map_to_error_types(
    http: httpx.AsyncClient, vendor: str, status: int, error_type: str
) -> None:
    events = await collect(http, "POST", "/v1/runs", json=body(model=f"{vendor}/error-{status}"))
    assert_well_formed(events)
    (error,) = [e.json for e in events if e.type == "error"]
    assert error["error_type"] == error_type and error["detail"]["status"] == status
    assert "SECRET" not in str(error)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_cancel_of_a_silent_vendor_closes_the_connection(
    http: httpx.AsyncClient, registry: Any, vendor_server: WireServer, vendor: str
) -> None:
    model = f"{vendor}/stall-2"
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=body(model=model))
    try:
        await stream.next_frame()
        request = vendor_server.recorder.last_request(model.split("/", 1)[1])
        sent = time.monotonic()
        cancelled = (await http.post(f"/v1/runs/{stream.run_id}/cancel")).json()
        assert cancelled["status"] == "cancelled"
        await assert_closed_by_client(request.connection, sent)
        rest = await stream.rest()
        assert frames(rest)[-2]["stop_reason"] == "cancelled"
    finally:
        await cm.__aexit__(None, None, None)
    (ending,) = await registry.stream_endings(stream.run_id)
    assert ending["outcome"] == "cancelled" and ending["upstream_closed"]
    assert ending["cancelled_at"] == "await"


@pytest.mark.parametrize("vendor", VENDORS)
async def test_cancel_mid_stream_closes_the_connection(
    http: httpx.AsyncClient, registry: Any, vendor_server: WireServer, vendor: str
) -> None:
    model = f"{vendor}/slow-200-20"
    stream, cm = await open_sse(http, "POST", "/v1/runs", json=body(model=model))
    try:
        await stream.next_frame()
        request = vendor_server.recorder.last_request(model.split("/", 1)[1])
        sent = time.monotonic()
        await http.post(f"/v1/runs/{stream.run_id}/cancel")
        await assert_closed_by_client(request.connection, sent)
        await stream.rest()
    finally:
        await cm.__aexit__(None, None, None)
    run = await wait_terminal(registry, stream.run_id)
    assert run.status == "cancelled" and 0 < run.usage.completion_tokens < 200


async def test_a_missing_key_fails_without_the_network(
    http: httpx.AsyncClient, settings: Any, vendor_server: WireServer
) -> None:
    # The session's settings carry keys; a run actor built without one must refuse at once.
    from rayruns.actors.remote import new_run_actor
    from rayruns.actors.spec import RunSpec
    from rayruns.providers.settings import ProviderSettings

    # Pointed at the wire server, so that a request it should not make is seen, not sent out.
    bare = ProviderSettings(
        _env_file=None,  # type: ignore[call-arg]
        openai_api_key=None,
        openai_base_url=vendor_server.base_urls["openai"],
    )
    actor = new_run_actor("rayruns-actor-test-no-key", settings.actors, bare)
    try:
        model = "openai/text-no-key-probe"
        spec = RunSpec(model=model, messages=[{"role": "user", "content": "x"}])
        await actor.start.remote("run-no-key", spec)
        result = await actor.result.remote("run-no-key")
        assert result.outcome.error.error_type == "llm_authentication"
        assert "OPENAI_API_KEY" in result.outcome.error.message
        seen = [r for r in vendor_server.recorder.requests if r.model == "text-no-key-probe"]
        assert seen == [], "the run reached the vendor's server without a key"
    finally:
        import ray

        ray.kill(actor)
