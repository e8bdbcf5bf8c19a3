"""The OpenAI-compatible endpoint, through the official `openai` client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import departures_handled, goes_on, wait_terminal


@pytest.fixture
def client(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_non_streaming(client: openai.AsyncOpenAI, http: httpx.AsyncClient) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="fake/echo",
        messages=[{"role": "system", "content": "be brief"}, *user("hello there world")],
        temperature=0.2,
        max_tokens=50,
        extra_body={"metadata": {"suite": "chat"}},
    )
    completion = raw.parse()
    run_id = raw.headers["x-run-id"]
    assert completion.id == "chatcmpl-" + run_id.removeprefix("run-")
    assert completion.object == "chat.completion" and completion.model == "fake/echo"
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == "hello there world"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 3)
    run = (await http.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "completed" and run["metadata"] == {"suite": "chat"}


async def test_streaming_chunks_follow_the_wire_format(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake/echo",
        messages=user("one two three"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first, *middle, last_choice, usage = chunks
    assert first.choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in middle) == "one two three"
    assert all(c.choices[0].finish_reason is None for c in [first, *middle])
    assert last_choice.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 3 and usage.usage.total_tokens == 6


async def test_streaming_without_usage_has_no_usage_chunk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake/echo", messages=user("a b"), stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_tool_calls(client: openai.AsyncOpenAI) -> None:
    tool = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    stream = await client.chat.completions.create(
        model="fake/echo",
        messages=user("weather?"),
        stream=True,
        extra_body={"provider_options": {"tool_call": tool}},
    )
    chunks = [chunk async for chunk in stream]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].type == "function"
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments or "") == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    whole = await client.chat.completions.create(
        model="fake/echo",
        messages=user("weather?"),
        extra_body={"provider_options": {"tool_call": tool}},
    )
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.tool_calls is not None
    assert whole.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]


WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    },
}


async def test_client_tool_round_trip(client: openai.AsyncOpenAI) -> None:
    """What every agent framework does: tools in, tool_calls out, the results sent back."""
    question = user("weather in Oslo?")
    script = {"steps": [{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}]}
    first = await client.chat.completions.create(
        model="fake/echo",
        messages=question,
        tools=[WEATHER],
        tool_choice="auto",
        parallel_tool_calls=False,
        extra_body={"provider_options": script},
    )
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls is not None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(tool_call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    # The whole conversation back, with the tool's result: the model answers from it.
    followup: Any = [
        *question,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny, 21 C"},
    ]
    stream = await client.chat.completions.create(
        model="fake/echo", messages=followup, tools=[WEATHER], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "sunny, 21 C"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_server_tools_stay_inside_the_completion(client: openai.AsyncOpenAI) -> None:
    script = {"steps": [{"tool_calls": [{"name": "add", "arguments": {"a": 40, "b": 2}}]}, {}]}
    completion = await client.chat.completions.create(
        model="fake/echo",
        messages=user("sum"),
        tools=[{"type": "server", "name": "add"}],  # type: ignore[list-item]
        extra_body={"provider_options": script},
    )
    (choice,) = completion.choices
    assert choice.message.content == "42" and choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 1 + 2


@pytest.mark.parametrize(
    ("fail", "exception", "status"),
    [
        ("rate_limit", openai.RateLimitError, 429),
        ("auth", openai.AuthenticationError, 401),
        ("bad_request", openai.BadRequestError, 400),
        ("timeout", openai.APIStatusError, 504),
        ("error", openai.APIStatusError, 502),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_failures_before_the_first_chunk_are_error_statuses(
    client: openai.AsyncOpenAI, fail: str, exception: type[Exception], status: int, stream: bool
) -> None:
    with pytest.raises(exception) as info:
        await client.chat.completions.create(
            model="fake/echo",
            messages=user("x y"),
            stream=stream,
            extra_body={"provider_options": {"fail": fail}},
        )
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == status
    assert "fake provider failure" in info.value.message
    assert info.value.response.headers["x-run-id"].startswith("run-")


async def test_a_failure_after_streaming_began_is_an_error_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="fake/echo",
        messages=user("a b c d"),
        stream=True,
        extra_body={"provider_options": {"fail": "error", "fail_after": 2}},
    )
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert "fake provider failure" in str(info.value)
    assert "".join(c.choices[0].delta.content or "" for c in received) == "a b "


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"messages": user("x")}, "model"),
        ({"model": "fake/echo", "messages": []}, "messages"),
        ({"model": "acme/x", "messages": user("x")}, "acme"),
        ({"model": "fake/echo", "messages": user("x"), "n": 2}, "n"),
        ({"model": "fake/echo", "messages": user("x"), "logit_bias": {}}, "logit_bias"),
        ({"model": "fake/echo", "messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        (
            {
                "model": "fake/echo",
                "messages": user("x"),
                "tools": [{"type": "server", "name": "nope"}],
            },
            "no server tool nope",
        ),
    ],
)
async def test_validation_errors_in_openai_shape(
    http: httpx.AsyncClient, body: dict[str, Any], needle: str
) -> None:
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and needle in error["message"]


async def test_bad_json_in_openai_shape(http: httpx.AsyncClient) -> None:
    r = await http.post(
        "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "error" in r.json()


async def test_closing_the_stream_cancels_the_run(
    client: openai.AsyncOpenAI, registry: Any
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="fake/echo",
        messages=user("a b c d"),
        stream=True,
        extra_body={"provider_options": {"hang_after": 1}},
    )
    stream = raw.parse()
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()
    run = await wait_terminal(registry, raw.headers["x-run-id"], timeout_s=30)
    assert run.status == "cancelled"


async def test_background_completion_survives_a_close(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, registry: Any
) -> None:
    words = " ".join(f"w{i}" for i in range(2000))  # never ends by itself within the test
    async with departures_handled(http, registry):
        raw = await client.chat.completions.with_raw_response.create(
            model="fake/echo",
            messages=user(words),
            stream=True,
            extra_body={"background": True, "provider_options": {"delay_s": 0.05}},
        )
        stream = raw.parse()
        async for _ in stream:
            break
        await stream.close()
    await goes_on(http, raw.headers["x-run-id"], after=0, more=12)
