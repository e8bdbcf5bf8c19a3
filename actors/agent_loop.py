"""The agent loop of one run: a step is one provider call; server tools run between steps.

The loop ends when the model answers without tool calls (`end_turn`), when a call needs the client
(`requires_approval`: a client tool, or a server tool the request marked `requires_approval`), or
at `max_steps`. Every message the run adds to its conversation is kept in order in `new`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from rayruns.actors.cancellation import drive
from rayruns.actors.conversation import Continuation, PendingCall
from rayruns.actors.frame_builder import FrameBuilder
from rayruns.actors.frame_log import LogFull
from rayruns.actors.frames import StopReason
from rayruns.actors.records import Usage
from rayruns.actors.server_tools import ServerTool, ToolCatalog, ToolResult, execute
from rayruns.actors.spec import RunSpec
from rayruns.actors.tool_requests import FunctionTool
from rayruns.providers.base import (
    FunctionCall,
    Message,
    MessageToolCall,
    Provider,
    ProviderCall,
    RunCancelled,
    TextDelta,
    ToolCall,
    ToolDefinition,
)

CANCELLED_CALL = "cancelled: the run was cancelled before this call finished"
FAILED_CALL = "not run: the run failed before this call finished"


class AgentLoop:
    def __init__(
        self,
        run_id: str,
        spec: RunSpec,
        provider: Provider,
        builder: FrameBuilder,
        cancelled: asyncio.Event,
        catalog: ToolCatalog,
        tool_timeout_s: float,
        history: list[Message],
        on_call: Callable[[ProviderCall], None],
    ) -> None:
        self._run_id = run_id
        self._spec = spec
        self._provider = provider
        self._builder = builder
        self._cancelled = cancelled
        self._timeout_s = tool_timeout_s
        self._on_call = on_call
        self._history = list(history)
        self.new: list[Message] = []
        self.pending: list[PendingCall] = []
        self.usage = Usage()
        self.abandoned_threads = 0
        self._calls: list[ProviderCall] = []
        # Calls of the last assistant message that have no tool message yet.
        self._open: dict[str, str] = {}
        self._server: dict[str, tuple[ServerTool, bool]] = {}
        self._definitions: list[ToolDefinition] = []
        for tool in spec.tools:
            if isinstance(tool, FunctionTool):
                self._definitions.append(tool.function)
                continue
            found = catalog.get(tool.name)
            if found is None:  # the registry checked; a catalog that changed since is a fault
                raise LookupError(f"server tool {tool.name!r} is not registered here")
            self._server[tool.name] = (found, tool.requires_approval)
            self._definitions.append(found.definition)

    async def run(self, continuation: Continuation) -> StopReason:
        try:
            return await self._loop(continuation)
        except RunCancelled:
            self._close_open(CANCELLED_CALL)
            raise
        except Exception:
            self._close_open(FAILED_CALL)
            raise

    async def _loop(self, continuation: Continuation) -> StopReason:
        self._builder.begin_step(1)
        self._open = {d.call.id: d.call.name for d in continuation.decisions}
        for decision in continuation.decisions:
            pending = decision.call
            if decision.action == "run":
                result = await self._run_server_tool(pending.name, pending.arguments)
            elif decision.action == "deny":
                result = ToolResult("error", decision.content)
            else:
                result = ToolResult("success", decision.content)
            self._tool_return(pending.id, result)
        for message in continuation.messages:
            self._add(message)
        step = 0
        while True:
            step += 1
            calls = await self._step(step)
            if not calls:
                return "end_turn"
            waiting: list[ToolCall] = []
            for call in calls:
                server = self._server.get(call.name)
                if server is None or server[1]:
                    waiting.append(call)
                else:
                    self._tool_return(
                        call.id, await self._run_server_tool(call.name, call.arguments)
                    )
            if waiting:
                self.pending = [
                    PendingCall(
                        id=c.id, name=c.name, arguments=c.arguments, server=c.name in self._server
                    )
                    for c in waiting
                ]
                self._builder.request_approvals(waiting)
                return "requires_approval"
            if step >= self._spec.max_steps:
                return "max_steps"

    async def _step(self, step: int) -> list[ToolCall]:
        if self._cancelled.is_set():
            raise RunCancelled
        target = self._spec.target
        call = ProviderCall(
            run_id=self._run_id,
            model=target.model_name,
            messages=list(self._history),
            options=target.options,
            step=step,
            cancelled=self._cancelled,
            tools=self._definitions,
            # A forced choice holds for the first step only: later steps would loop forever.
            tool_choice=self._spec.tool_choice if step == 1 else None,
            parallel_tool_calls=self._spec.parallel_tool_calls,
        )
        self._calls.append(call)
        self._on_call(call)
        self._builder.begin_step(step)
        text: list[str] = []
        calls: list[ToolCall] = []
        try:
            # Closed on the way out whatever ends the loop (a full log too), so the provider's
            # stream is closed at once, not when the generator is collected.
            stream = drive(self._provider.stream(call), self._cancelled)
            async with contextlib.aclosing(stream) as events:
                async for event in events:
                    self._builder.add(event)
                    if isinstance(event, TextDelta):
                        text.append(event.text)
                    elif isinstance(event, ToolCall):
                        calls.append(event)
        except BaseException:
            with contextlib.suppress(LogFull):  # the run is ending anyway, for its own reason
                self._builder.end_message()
            raise
        else:
            self._builder.end_message()
        finally:
            self._count_usage()
            if text or calls:
                self._add(
                    Message(
                        role="assistant",
                        content="".join(text),
                        tool_calls=[
                            MessageToolCall(
                                id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)
                            )
                            for c in calls
                        ],
                    )
                )
                self._open = {c.id: c.name for c in calls}
        return calls

    async def _run_server_tool(self, name: str, arguments: str) -> ToolResult:
        if self._cancelled.is_set():
            raise RunCancelled
        tool, _ = self._server[name]
        result, abandoned = await execute(tool, arguments, self._timeout_s, self._cancelled)
        self.abandoned_threads += abandoned
        return result

    def _tool_return(self, call_id: str, result: ToolResult) -> None:
        self._builder.tool_return(call_id, result.status, result.content)
        self._add(Message(role="tool", tool_call_id=call_id, content=result.content))
        self._open.pop(call_id, None)

    def _close_open(self, content: str) -> None:
        """Calls left without a result get one, so the history stays valid for the next run."""
        for call_id in list(self._open):
            try:
                self._tool_return(call_id, ToolResult("error", content))
            except LogFull:  # no frame fits any more; the history still gets the result
                self._add(Message(role="tool", tool_call_id=call_id, content=content))
                self._open.pop(call_id, None)

    def _add(self, message: Message) -> None:
        self._history.append(message)
        self.new.append(message)

    def _count_usage(self) -> None:
        prompt = sum(c.usage.prompt_tokens for c in self._calls)
        completion = sum(c.usage.completion_tokens for c in self._calls)
        self.usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            step_count=len(self._calls),
        )
