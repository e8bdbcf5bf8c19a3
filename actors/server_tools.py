"""Server tools: Python functions registered by import path (`RAYRUNS_TOOLS=pkg.module[,…]`) that
run inside the run actor.

A module offers the functions in its `RAYRUNS_TOOLS` list if it has one, else its public
functions. Each tool's JSON schema comes from its type hints (pydantic; `Annotated[..., Field(
description=...)]` describes a parameter) and its docstring (the first paragraph describes the
tool; a Google-style `Args:` section describes parameters that have no description yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic_core import to_json

from rayruns.providers.base import RunCancelled, ToolDefinition

# A result longer than this reaches the model cut short: it is sent to the provider every step.
RESULT_MAX_CHARS = 256 * 1024

_ARG_LINE = re.compile(r"^\s{2,}(\w+)(?:\s*\([^)]*\))?\s*:\s*(.+)$")


class ToolConfigError(ValueError):
    """`RAYRUNS_TOOLS` names a module that does not import, or a function that cannot be a tool."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    status: Literal["success", "error"]
    content: str


@dataclass(frozen=True, slots=True)
class ServerTool:
    definition: ToolDefinition
    fn: Callable[..., Any]
    arguments: type[BaseModel]

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


def tool_from_function(fn: Callable[..., Any]) -> ServerTool:
    """A tool from a function's signature, type hints and docstring."""
    name = fn.__name__
    doc = inspect.getdoc(fn) or ""
    summary, arg_docs = _parse_docstring(doc)
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ToolConfigError(f"tool {name!r}: its type hints do not resolve: {exc}") from None
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ToolConfigError(
                f"tool {name!r}: parameter {param.name!r} cannot be named in JSON"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    model = create_model(f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    schema = model.model_json_schema()
    schema.pop("title", None)
    for pname, prop in schema.get("properties", {}).items():
        prop.pop("title", None)
        if pname in arg_docs and "description" not in prop:
            prop["description"] = arg_docs[pname]
    try:
        definition = ToolDefinition(name=name, description=summary, parameters=schema)
    except ValidationError as exc:
        raise ToolConfigError(f"tool {name!r}: {exc.errors()[0]['msg']}") from None
    return ServerTool(definition, fn, model)


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    summary = doc.split("\n\n", 1)[0].strip()
    args: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            in_args = True
        elif in_args and line and not line[0].isspace():
            in_args = False
        elif in_args and (match := _ARG_LINE.match("  " + line.lstrip() if line else line)):
            args[match.group(1)] = match.group(2).strip()
    return summary, args


class ToolCatalog:
    """The server tools of `RAYRUNS_TOOLS`, by name."""

    def __init__(self, tools: Iterable[ServerTool] = ()) -> None:
        self.tools: dict[str, ServerTool] = {}
        for tool in tools:
            if tool.name in self.tools:
                raise ToolConfigError(f"two server tools are named {tool.name!r}")
            self.tools[tool.name] = tool

    @classmethod
    def load(cls, modules: Iterable[str]) -> ToolCatalog:
        tools: list[ServerTool] = []
        for module_name in modules:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise ToolConfigError(
                    f"RAYRUNS_TOOLS: cannot import {module_name!r}: {exc}"
                ) from exc
            listed = getattr(module, "RAYRUNS_TOOLS", None)
            if listed is None:
                listed = [
                    fn
                    for fn_name, fn in vars(module).items()
                    if inspect.isfunction(fn)
                    and not fn_name.startswith("_")
                    and fn.__module__ == module.__name__
                ]
            tools += [tool_from_function(fn) for fn in listed]
        return cls(tools)

    def get(self, name: str) -> ServerTool | None:
        return self.tools.get(name)

    def unknown(self, names: Iterable[str]) -> list[str]:
        return sorted(set(names) - set(self.tools))


async def execute(
    tool: ServerTool, arguments: str, timeout_s: float, cancelled: asyncio.Event
) -> tuple[ToolResult, bool]:
    """Run `tool` on the model's JSON `arguments`; (its result, whether a thread was abandoned).

    An async tool is cancelled on the run's cancel or at its timeout; a sync one runs in a thread
    of its own, which Python cannot stop: it is abandoned (left to finish unobserved). Raises
    RunCancelled when the run is cancelled meanwhile.
    """
    try:
        kwargs = dict(tool.arguments.model_validate_json(arguments or "{}"))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in exc.errors()
        )
        return ToolResult("error", f"invalid arguments for {tool.name}: {problems}"), False
    work: asyncio.Future[Any] = (
        asyncio.ensure_future(tool.fn(**kwargs)) if tool.is_async else _in_thread(tool.fn, kwargs)
    )
    waiter = asyncio.ensure_future(cancelled.wait())
    try:
        done, _ = await asyncio.wait(
            (work, waiter), timeout=timeout_s, return_when="FIRST_COMPLETED"
        )
    finally:
        waiter.cancel()
    if work not in done:
        work.cancel()
        if tool.is_async:
            await asyncio.wait((work,))  # its handlers and `finally` run before the run goes on
        if cancelled.is_set():
            raise RunCancelled
        return ToolResult(
            "error", f"{tool.name} timed out after {timeout_s:g} s"
        ), not tool.is_async
    failure = work.exception()
    if failure is not None:
        return ToolResult(
            "error", f"{tool.name} failed: {type(failure).__name__}: {failure}"
        ), False
    return ToolResult("success", _as_text(work.result())), False


def _in_thread(fn: Callable[..., Any], kwargs: dict[str, Any]) -> asyncio.Future[Any]:
    # A thread of its own, not the loop's executor: an abandoned call must not hold a pool slot.
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:  # on the loop's thread
        if not future.done():
            (future.set_result if ok else future.set_exception)(value)

    def target() -> None:
        try:
            outcome = (True, fn(**kwargs))
        except BaseException as exc:
            outcome = (False, exc)
        # The loop may be gone: an abandoned call can outlive its run and its actor's loop.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name=f"tool {fn.__name__}", daemon=True).start()
    return future


def _as_text(value: Any) -> str:
    text = value if isinstance(value, str) else to_json(value, fallback=str).decode()
    if len(text) > RESULT_MAX_CHARS:
        text = text[:RESULT_MAX_CHARS] + f"… [cut at {RESULT_MAX_CHARS} characters]"
    return text
