"""A tool round trip per vendor against its wire-format server: tools declared, the model's
calls read, the calls and their results sent back in the vendor's own shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rayruns.providers.base import (
    FunctionCall,
    Message,
    MessageToolCall,
    NamedFunction,
    NamedToolChoice,
    TextDelta,
    ToolCall,
    ToolDefinition,
)
from tests.providers.support import ProviderFactory, collect, make_call
from tests.providers.wire_servers import WireServer

WEATHER = ToolDefinition(
    name="get_weather",
    description="The weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolDefinition(
    name="get_time", parameters={"type": "object", "properties": {"tz": {"type": "string"}}}
)
QUESTION = [Message(role="system", content="Be brief."), Message(role="user", content="Paris?")]
RESULTS = {"get_weather": "sunny", "get_time": "12:00"}


async def round_trip(
    vendor: str, make: ProviderFactory, wire: WireServer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both requests' bodies: the one that declared the tools, the one that sent the results."""
    provider = make(vendor)
    first = make_call(provider, "tools", messages=QUESTION)
    first.tools = [WEATHER, TIME]
    first.tool_choice = NamedToolChoice(function=NamedFunction(name="get_weather"))
    first.parallel_tool_calls = False
    events = await collect(provider, first)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"tz": "Europe/Paris"}),
    ]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    history = [
        *QUESTION,
        Message(
            role="assistant",
            content=text,
            tool_calls=[
                MessageToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments))
                for c in calls
            ],
        ),
        *(Message(role="tool", tool_call_id=c.id, content=RESULTS[c.name]) for c in calls),
    ]
    model = f"answer{vendor}"  # not a scenario: plain text, and a name no other test uses
    second = make_call(provider, model, messages=history)
    second.tools = [WEATHER, TIME]
    answer = await collect(provider, second)
    assert (
        "".join(e.text for e in answer if isinstance(e, TextDelta)) == "Hello from the wire server."
    )
    return wire.recorder.last_request("tools").body, wire.recorder.last_request(model).body


async def test_openai(make: ProviderFactory, wire: WireServer) -> None:
    declared, answered = await round_trip("openai", make, wire)
    assert declared["tools"] == [
        {"type": "function", "function": WEATHER.model_dump(exclude_none=True)},
        {"type": "function", "function": TIME.model_dump(exclude_none=True)},
    ]
    assert declared["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert declared["parallel_tool_calls"] is False
    assert answered["messages"][2:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_w2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_w2", "content": "12:00"},
    ]
    assert "tool_choice" not in answered


async def test_anthropic(make: ProviderFactory, wire: WireServer) -> None:
    declared, answered = await round_trip("anthropic", make, wire)
    assert declared["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER.parameters,
        },
        {"name": "get_time", "description": "", "input_schema": TIME.parameters},
    ]
    assert declared["tool_choice"] == {
        "type": "tool",
        "name": "get_weather",
        "disable_parallel_tool_use": True,
    }
    assert answered["system"] == "Be brief."
    assert answered["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "call_w1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_w2",
                    "name": "get_time",
                    "input": {"tz": "Europe/Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_w1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "call_w2", "content": "12:00"},
            ],
        },
    ]


async def test_google(make: ProviderFactory, wire: WireServer) -> None:
    declared, answered = await round_trip("google", make, wire)
    # The SDK sends the declarations' fields as given; Gemini's JSON takes either spelling.
    assert declared["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "parameters_json_schema": WEATHER.parameters,
                },
                {"name": "get_time", "description": "", "parameters_json_schema": TIME.parameters},
            ]
        }
    ]
    assert declared["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    model_turn, results_turn = answered["contents"][1:]
    ids = [p["functionCall"]["id"] for p in model_turn["parts"][1:]]
    assert len(set(ids)) == 2 and all(i.startswith("call-") for i in ids)
    assert model_turn == {
        "role": "model",
        "parts": [
            {"text": "Checking."},
            {"functionCall": {"id": ids[0], "name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"id": ids[1], "name": "get_time", "args": {"tz": "Europe/Paris"}}},
        ],
    }
    assert results_turn == {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "id": ids[0],
                    "name": "get_weather",
                    "response": {"result": "sunny"},
                }
            },
            {
                "functionResponse": {
                    "id": ids[1],
                    "name": "get_time",
                    "response": {"result": "12:00"},
                }
            },
        ],
    }


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "google"])
async def test_tools_are_not_provider_options(vendor: str, make: ProviderFactory) -> None:
    provider = make(vendor)
    with pytest.raises(ValueError, match="tools"):
        provider.parse_options({"tools": []})
