"""Through HTTP: no `provider_options` a client sends can send a run's request, or the server's
key, to another host (422 naming what is allowed); allowed options reach the vendor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import body, collect, frames
from tests.providers.listener import RecordingListener
from tests.providers.redirects import redirecting_options
from tests.providers.support import VENDORS
from tests.providers.wire_servers import WireServer


@pytest.fixture(scope="module")
def listener() -> Iterator[RecordingListener]:
    with RecordingListener() as server:
        yield server


@pytest.fixture
def client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_runs_refuse_every_redirecting_option(
    http: httpx.AsyncClient, listener: RecordingListener, vendor: str
) -> None:
    answers = []
    for option in redirecting_options(listener.url):
        request = body(model=f"{vendor}/text", provider_options=option, stream=False)
        r = await http.post("/v1/runs", json=request)
        answers.append((option, r.status_code, r.json().get("detail", "")))
    assert listener.received == []
    wrong = [a for a in answers if a[1] != 422 or "allowed" not in a[2]]
    assert not wrong


@pytest.mark.parametrize("vendor", VENDORS)
async def test_chat_completions_refuse_every_redirecting_option(
    client: openai.AsyncOpenAI, listener: RecordingListener, vendor: str
) -> None:
    wrong = []
    for option in redirecting_options(listener.url):
        try:
            await client.chat.completions.create(
                model=f"{vendor}/text",
                messages=[{"role": "user", "content": "x"}],
                extra_body={"provider_options": option},
            )
        except openai.UnprocessableEntityError as exc:
            if "allowed" not in exc.message:
                wrong.append((option, exc.message))
        else:
            wrong.append((option, "accepted"))
    assert listener.received == []
    assert not wrong


async def test_options_over_the_size_cap_are_422(http: httpx.AsyncClient) -> None:
    big = {"user": "x" * 17 * 1024}
    r = await http.post("/v1/runs", json=body(model="openai/text", provider_options=big))
    assert r.status_code == 422 and "16384 allowed" in r.json()["detail"]


async def test_allowed_options_reach_the_vendor(
    http: httpx.AsyncClient, client: openai.AsyncOpenAI, vendor_server: WireServer
) -> None:
    run = body(model="openai/text-2", provider_options={"seed": 11, "max_completion_tokens": 5})
    events = await collect(http, "POST", "/v1/runs", json=run)
    assert frames(events)[-2]["stop_reason"] == "end_turn"
    sent: dict[str, Any] = vendor_server.recorder.last_request("text-2").body
    assert (sent["seed"], sent["max_completion_tokens"]) == (11, 5)

    await client.chat.completions.create(
        model="google/text-3",
        messages=[{"role": "user", "content": "x"}],
        extra_body={"provider_options": {"topK": 4, "response_mime_type": "text/plain"}},
    )
    config = vendor_server.recorder.last_request("text-3").body["generationConfig"]
    assert (config["topK"], config["responseMimeType"]) == (4, "text/plain")


@pytest.mark.parametrize(
    ("model", "options", "where", "name"),
    [
        ("google/text-4", {"stopSequences": ["Y"]}, "generationConfig", "stopSequences"),
        ("anthropic/text-4", {"stop_sequences": ["Y"]}, None, "stop_sequences"),
        ("openai/text-4", {"stop": ["Y"]}, None, "stop"),
    ],
)
async def test_a_chat_field_gives_way_to_the_same_option_in_provider_options(
    client: openai.AsyncOpenAI,
    vendor_server: WireServer,
    model: str,
    options: dict[str, Any],
    where: str | None,
    name: str,
) -> None:
    await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "x"}],
        stop="X",
        extra_body={"provider_options": options},
    )
    sent: dict[str, Any] = vendor_server.recorder.last_request("text-4").body
    assert (sent[where] if where else sent)[name] == ["Y"]
