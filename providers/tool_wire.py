"""Conversations with tool calls, and tool definitions, in each vendor's request shape.

The runtime's vocabulary is OpenAI's (assistant `tool_calls`, `tool` messages answering them by
`tool_call_id`, function tools with JSON-schema parameters); Anthropic and Gemini get theirs:
tool_use / tool_result blocks, functionCall / functionResponse parts, function declarations.
"""

from __future__ import annotations

import json
from typing import Any

from rayruns.providers.base import Message, ProviderCall, ToolChoice, ToolDefinition

# --- OpenAI Chat Completions -------------------------------------------------------------------


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            message["content"] = m.content or None
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def openai_tools(call: ProviderCall) -> dict[str, Any]:
    """The request fields for the call's tools (none without tools)."""
    if not call.tools:
        return {}
    fields: dict[str, Any] = {
        "tools": [
            {"type": "function", "function": t.model_dump(exclude_none=True)} for t in call.tools
        ]
    }
    if call.tool_choice is not None:
        choice = call.tool_choice
        fields["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
    if call.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = call.parallel_tool_calls
    return fields


# --- Anthropic Messages ------------------------------------------------------------------------


def anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Tool results travel in user turns; consecutive turns of one role become one turn."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        blocks: list[dict[str, Any]]
        if m.role == "tool":
            role = "user"
            blocks = [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}]
        else:
            role = m.role
            blocks = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [
                {
                    "type": "tool_use",
                    "id": c.id,
                    "name": c.function.name,
                    "input": _arguments(c.function.arguments),
                }
                for c in m.tool_calls
            ]
        if out and out[-1]["role"] == role:
            out[-1]["content"] += blocks
        else:
            out.append({"role": role, "content": blocks})
    return out


def anthropic_tools(call: ProviderCall) -> dict[str, Any]:
    if not call.tools:
        return {}
    fields: dict[str, Any] = {
        "tools": [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in call.tools
        ]
    }
    choice = _anthropic_choice(call.tool_choice)
    if call.parallel_tool_calls is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        fields["tool_choice"] = choice
    return fields


def _anthropic_choice(choice: ToolChoice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    return {"type": "tool", "name": choice.function.name}


# --- Gemini ------------------------------------------------------------------------------------


def gemini_contents(messages: list[Message]) -> list[dict[str, Any]]:
    """A function response names its function: found from the call it answers."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        parts: list[dict[str, Any]]
        if m.role == "tool":
            role = "user"
            call_id = m.tool_call_id or ""
            response = {"name": names.get(call_id, ""), "response": {"result": m.content}}
            parts = [{"function_response": {"id": call_id, **response}}]
        else:
            role = "model" if m.role == "assistant" else "user"
            parts = [{"text": m.content}] if m.content else []
            for c in m.tool_calls:
                names[c.id] = c.function.name
                args = _arguments(c.function.arguments)
                parts.append({"function_call": {"id": c.id, "name": c.function.name, "args": args}})
        if out and out[-1]["role"] == role:
            out[-1]["parts"] += parts
        else:
            out.append({"role": role, "parts": parts or [{"text": ""}]})
    return out


def gemini_tools(call: ProviderCall) -> dict[str, Any]:
    """GenerateContentConfig fields for the call's tools (none without tools)."""
    if not call.tools:
        return {}
    fields: dict[str, Any] = {
        "tools": [{"function_declarations": [_declaration(t) for t in call.tools]}]
    }
    choice = call.tool_choice
    if choice is not None:
        if isinstance(choice, str):
            mode = {"auto": "AUTO", "required": "ANY", "none": "NONE"}[choice]
            config: dict[str, Any] = {"mode": mode}
        else:
            config = {"mode": "ANY", "allowed_function_names": [choice.function.name]}
        fields["tool_config"] = {"function_calling_config": config}
    return fields


def _declaration(tool: ToolDefinition) -> dict[str, Any]:
    # `parameters_json_schema` takes JSON Schema as is (`parameters` wants Gemini's subset).
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters_json_schema": tool.parameters,
    }


def _arguments(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as an object; a model that sent something else keeps it as text."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": value}
