"""The three vendor providers against wire-exact local servers: events, usage, options, errors."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from rayruns.providers.base import Message, ReasoningDelta, TextDelta, ToolCall
from rayruns.providers.errors import (
    ProviderAuthentication,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    StreamIncomplete,
)
from tests.providers.support import (
    API_KEY,
    MESSAGES,
    PROMPT_WORDS,
    VENDORS,
    ProviderFactory,
    collect,
    make_call,
    stream,
)
from tests.providers.wire_servers import WireServer

pytestmark = pytest.mark.parametrize("vendor", VENDORS)


async def test_text(vendor: str, make: ProviderFactory) -> None:
    provider = make(vendor)
    call = make_call(provider, "text")
    events = await collect(provider, call)
    assert all(isinstance(e, TextDelta) for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == (
        "Hello from the wire server."
    )
    assert len({e.block for e in events if isinstance(e, TextDelta)}) == 1
    assert call.ending.outcome == "completed"
    assert call.ending.upstream_closed


async def test_usage_is_the_vendors_count(vendor: str, make: ProviderFactory) -> None:
    provider = make(vendor)
    call = make_call(provider, "text-12")
    await collect(provider, call)
    assert (call.usage.prompt_tokens, call.usage.completion_tokens) == (PROMPT_WORDS, 12)


async def test_reasoning_then_text(vendor: str, make: ProviderFactory) -> None:
    provider = make(vendor)
    call = make_call(provider, "reasoning")
    events = await collect(provider, call)
    thoughts = [e for e in events if isinstance(e, ReasoningDelta)]
    texts = [e for e in events if isinstance(e, TextDelta)]
    assert "".join(e.text for e in thoughts) == "Let me think about it."
    assert "".join(e.text for e in texts) == "Hello from the wire server."
    assert events.index(thoughts[-1]) < events.index(texts[0])
    assert {e.block for e in thoughts} == {0} and {e.block for e in texts} == {1}
    assert call.usage.completion_tokens == 8  # three thoughts and five text chunks


async def test_tool_calls_are_assembled(vendor: str, make: ProviderFactory) -> None:
    provider = make(vendor)
    call = make_call(provider, "tools")
    events = await collect(provider, call)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Checking."]
    tools = [e for e in events if isinstance(e, ToolCall)]
    assert [(t.name, json.loads(t.arguments)) for t in tools] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]
    assert len({t.id for t in tools}) == 2 and all(t.id for t in tools)
    if vendor != "google":  # Gemini sends no ids; the provider makes them
        assert [t.id for t in tools] == ["call_w1", "call_w2"]
    assert call.ending.outcome == "completed"


async def test_common_options_and_extras_reach_the_wire(
    vendor: str, make: ProviderFactory, wire: WireServer
) -> None:
    provider = make(vendor)
    extra = {
        "openai": {"seed": 7},
        "anthropic": {"metadata": {"user_id": "u-7"}},
        "google": {"top_k": 5},
    }[vendor]
    options = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "stop": "END", **extra}
    messages = [
        *MESSAGES,
        Message(role="assistant", content="Hi."),
        Message(role="user", content="Again."),
    ]
    await collect(provider, make_call(provider, "text", options, messages))
    sent = wire.recorder.last_request("text")
    body, headers = sent.body, sent.headers
    if vendor == "openai":
        assert headers["authorization"] == f"Bearer {API_KEY}"
        assert body["messages"] == [{"role": m.role, "content": m.content} for m in messages]
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        expected = {"temperature": 0.3, "top_p": 0.9, "max_completion_tokens": 50, "stop": ["END"]}
        assert {k: body[k] for k in [*expected, "seed"]} == {**expected, "seed": 7}
    elif vendor == "anthropic":
        assert API_KEY in (headers.get("x-api-key"), headers.get("authorization", "")[7:])
        assert body["system"] == "Be brief."
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        expected = {"temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "stop_sequences": ["END"]}
        assert {k: body[k] for k in [*expected, "metadata"]} == {
            **expected,
            "metadata": {"user_id": "u-7"},
        }
    else:
        assert headers["x-goog-api-key"] == API_KEY
        assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
        assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
        expected = {
            "temperature": 0.3,
            "topP": 0.9,
            "maxOutputTokens": 50,
            "stopSequences": ["END"],
            "topK": 5,
        }
        assert {k: body["generationConfig"][k] for k in expected} == expected


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, ProviderBadRequest),
        (401, ProviderAuthentication),
        (403, ProviderAuthentication),
        (404, ProviderBadRequest),
        (429, ProviderRateLimited),
        (500, ProviderError),
        (503, ProviderError),
        (504, ProviderTimeout),
    ],
)
async def test_http_error_status_is_mapped(
    vendor: str, status: int, error: type[ProviderError], make: ProviderFactory, wire: WireServer
) -> None:
    provider = make(vendor)
    call = make_call(provider, f"error-{status}")
    with pytest.raises(ProviderError) as raised:
        await collect(provider, call)
    exc = raised.value
    assert type(exc) is error
    assert exc.detail.status == status
    assert exc.detail.vendor_message
    assert API_KEY not in exc.message and API_KEY not in exc.detail.model_dump_json()
    # The vendor's id of the request, where it sends one (Gemini does not).
    sent = wire.recorder.last_request(f"error-{status}")
    expected_id = None if vendor == "google" else f"req_wire{sent.id}"
    assert exc.detail.request_id == expected_id
    assert call.ending.outcome == "failed" and call.ending.upstream_closed


async def test_rejected_key_echoed_by_the_vendor_is_scrubbed(
    vendor: str, make: ProviderFactory, wire: WireServer
) -> None:
    provider = make(vendor)
    with pytest.raises(ProviderAuthentication) as raised:
        await collect(provider, make_call(provider, "error-401"))
    # The server did echo it; the error must not carry it further.
    assert API_KEY in json.dumps(wire.recorder.last_request("error-401").headers)
    assert "***" in (raised.value.detail.vendor_message or "")
    assert API_KEY not in str(raised.value.detail)


async def test_connection_cut_mid_stream_is_a_provider_error(
    vendor: str, make: ProviderFactory
) -> None:
    # The body breaks off inside a chunk: the transport reports a broken connection, which is
    # an llm_error, not stream_incomplete (the vendor never ended the message, cleanly or not).
    provider = make(vendor)
    call = make_call(provider, "cut-3")
    received = []
    with pytest.raises(ProviderError) as raised:
        async for event in stream(provider, call):
            received.append(event)
    assert type(raised.value) is ProviderError
    assert raised.value.detail.status is None and raised.value.detail.vendor_message
    assert len(received) == 3 and call.usage.completion_tokens == 3
    assert call.ending.outcome == "failed" and call.ending.upstream_closed


async def test_body_ending_without_end_marker_is_stream_incomplete(
    vendor: str, make: ProviderFactory
) -> None:
    provider = make(vendor)
    call = make_call(provider, "truncated-3")
    with pytest.raises(StreamIncomplete) as raised:
        await collect(provider, call)
    assert raised.value.error_type == "stream_incomplete"
    assert call.ending.outcome == "failed"


async def test_error_event_inside_the_stream(vendor: str, make: ProviderFactory) -> None:
    provider = make(vendor)
    call = make_call(provider, "inband-2")
    with pytest.raises(ProviderError) as raised:
        await collect(provider, call)
    expected = {"openai": None, "anthropic": 529, "google": 500}[vendor]
    assert type(raised.value) is ProviderError
    assert raised.value.detail.status == expected
    assert raised.value.detail.vendor_message


async def test_read_timeout_is_provider_timeout(vendor: str, make: ProviderFactory) -> None:
    provider = make(vendor, provider_timeout_s=0.2)
    call = make_call(provider, "stall-1")
    with pytest.raises(ProviderTimeout) as raised:
        await collect(provider, call)
    assert raised.value.error_type == "llm_timeout"
    assert call.ending.outcome == "failed" and call.ending.upstream_closed


async def test_missing_key_fails_before_any_connection(
    vendor: str, make: ProviderFactory, wire: WireServer
) -> None:
    provider = make(vendor, **{f"{vendor}_api_key": None})
    seen = len(wire.recorder.connections)
    call = make_call(provider, "text")
    with pytest.raises(ProviderAuthentication, match=f"no API key for {vendor}: set RAYRUNS_"):
        await collect(provider, call)
    assert len(wire.recorder.connections) == seen
    assert call.ending.outcome == "failed"


async def test_sdk_is_imported_only_by_the_stream(vendor: str) -> None:
    # The options model must work without the SDK: the API validates options with it.
    sdk = {"openai": "openai", "anthropic": "anthropic", "google": "google.genai"}[vendor]
    code = (
        f"import sys; from rayruns.providers.catalog import make_provider, parse_options;"
        f"from rayruns.providers.settings import ProviderSettings;"
        f"parse_options({vendor!r}, {{'temperature': 0.1, 'stop': ['x']}});"
        f"make_provider({vendor!r}, ProviderSettings());"
        f"print({sdk!r} in sys.modules)"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().strip() == "False"
