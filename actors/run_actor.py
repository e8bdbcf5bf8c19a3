"""RunActor: owns one run at a time — its provider stream, its cancel event and its frame log.

The pump runs the provider in its own task, so no reader can stop it; readers follow the log
from any `seq_id`, each getting everything logged since its last read as one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel

from rayruns.actors.cancellation import drive
from rayruns.actors.frame_builder import FrameBuilder
from rayruns.actors.frame_log import FrameLog, LogFull
from rayruns.actors.frames import LoggedFrame, StopReason
from rayruns.actors.limits import RunLimits, output_limit, timed_out
from rayruns.actors.records import Outcome, RunError, Usage, terminal_frames
from rayruns.actors.spec import RunSpec
from rayruns.providers.base import Provider, ProviderCall, RunCancelled
from rayruns.providers.catalog import make_provider
from rayruns.providers.errors import ProviderError
from rayruns.providers.settings import ProviderSettings

log = logging.getLogger(__name__)


class FinishedRun(BaseModel):
    """What the registry records when a run ends: outcome, whole log, how each stream ended."""

    run_id: str
    outcome: Outcome
    frames: list[LoggedFrame]
    stream_endings: list[dict[str, Any]]


class NotThisRun(LookupError):
    """The actor is not (or no longer) running the run asked about."""


class RunActor:
    """An async Ray actor (see `actors.remote`). One run at a time; `reset` readies the next."""

    def __init__(self, provider_settings: ProviderSettings) -> None:
        self._settings = provider_settings
        self._cancelled_ids: set[str] = set()
        # Providers hold SDK clients and their connection pools, no run state: kept across runs.
        self._providers: dict[str, Provider] = {}
        self._clear()

    def _clear(self) -> None:
        self._run_id: str | None = None
        self._cancel = asyncio.Event()
        self._log = FrameLog()
        self._calls: list[ProviderCall] = []
        self._result: FinishedRun | None = None
        self._done = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._timed_out: float | None = None  # the age limit the run reached

    async def start(self, run_id: str, spec: RunSpec, limits: RunLimits | None = None) -> None:
        if self._run_id is not None:
            raise RuntimeError(f"actor is busy with {self._run_id}; cannot start {run_id}")
        self._run_id = run_id
        limits = limits or RunLimits()
        self._log = FrameLog(limits.max_frames, limits.max_bytes)
        if run_id in self._cancelled_ids:
            self._cancel.set()
        # The age limit ends a run through its cancel event: the same path that reliably closes
        # a provider stream mid-await, then recorded as a timeout instead of a cancel.
        self._deadline = asyncio.get_running_loop().call_later(
            limits.max_run_s, self._expire, limits.max_run_s
        )
        self._pump = asyncio.create_task(self._run(run_id, spec), name=f"pump {run_id}")

    def _expire(self, max_run_s: float) -> None:
        if not self._cancel.is_set():
            self._timed_out = max_run_s
            self._cancel.set()

    async def cancel(self, run_id: str) -> None:
        """Instant: set the event (or remember the intent, when start has not arrived yet)."""
        if run_id == self._run_id:
            self._cancel.set()
        else:
            self._cancelled_ids.add(run_id)

    async def read(self, run_id: str, after_seq: int) -> tuple[list[LoggedFrame], bool]:
        """Long-poll: the frames after `after_seq` (waiting for at least one), and whether done."""
        self._check(run_id)
        await self._log.wait_beyond(after_seq)
        return self._log.after(after_seq), self._log.closed

    async def result(self, run_id: str) -> FinishedRun:
        self._check(run_id)
        await self._done.wait()
        assert self._result is not None
        return self._result

    async def snapshot(self, run_id: str) -> tuple[list[LoggedFrame], Usage]:
        """The log so far and the usage counted so far: what is kept of a run that ignored
        its cancel, before its actor is killed."""
        self._check(run_id)
        prompt = sum(call.usage.prompt_tokens for call in self._calls)
        completion = sum(call.usage.completion_tokens for call in self._calls)
        usage = Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            step_count=len(self._calls),
        )
        return self._log.snapshot(), usage

    async def reset(self) -> None:
        """Forget the finished run so a pool can hand this actor the next one."""
        if self._pump is not None and not self._pump.done():
            raise RuntimeError(f"cannot reset while {self._run_id} is running")
        self._cancelled_ids.discard(self._run_id or "")
        self._clear()

    async def current_run(self) -> str | None:
        return self._run_id

    async def ping(self) -> int:
        """The actor's process id: readiness, and which process serves a run."""
        return os.getpid()

    def _check(self, run_id: str) -> None:
        if run_id != self._run_id:
            raise NotThisRun(f"this actor is not running {run_id}")

    async def _run(self, run_id: str, spec: RunSpec) -> None:
        builder = FrameBuilder(run_id, self._log, stream_tokens=spec.stream_tokens)
        usage = Usage()
        error: RunError | None = None
        stop: StopReason
        try:
            stop = await self._step(run_id, spec, builder, usage)
        except RunCancelled:
            stop = "cancelled"
            if self._timed_out is not None:
                stop = "error"
                error = timed_out(self._timed_out)
        except LogFull as exc:
            stop = "error"
            error = output_limit(str(exc))
        except ProviderError as exc:
            stop = "llm_api_error"
            detail = exc.detail.model_dump()
            error = RunError(error_type=exc.error_type, message=exc.message, detail=detail)
        except Exception as exc:
            log.exception("run %s failed inside the runtime", run_id)
            stop = "error"
            # The exception's text may hold paths or addresses: it stays in the server's log.
            error = RunError(
                error_type="internal_error",
                message=f"an internal error ({type(exc).__name__}) ended the run; see the log",
            )
        if self._deadline is not None:
            self._deadline.cancel()
        outcome = Outcome(stop_reason=stop, usage=usage, error=error)
        self._log.extend(terminal_frames(run_id, self._log.next_seq - 1, outcome))
        self._log.close()
        self._result = FinishedRun(
            run_id=run_id,
            outcome=outcome,
            frames=self._log.snapshot(),
            stream_endings=[asdict(call.ending) for call in self._calls],
        )
        self._done.set()

    async def _step(
        self, run_id: str, spec: RunSpec, builder: FrameBuilder, usage: Usage
    ) -> StopReason:
        """One provider call. This runtime executes no tools, so a tool call ends the run."""
        if self._cancel.is_set():
            raise RunCancelled
        target = spec.target
        provider = self._providers.get(target.provider)
        if provider is None:
            provider = self._providers[target.provider] = make_provider(
                target.provider, self._settings
            )
        call = ProviderCall(
            run_id=run_id,
            model=target.model_name,
            messages=spec.messages,
            options=target.options,
            step=1,
            cancelled=self._cancel,
        )
        self._calls.append(call)
        builder.begin_step(1)
        try:
            # Closed on the way out whatever ends the loop (a full log too), so the provider's
            # stream is closed at once, not when the generator is collected.
            async with contextlib.aclosing(drive(provider.stream(call), self._cancel)) as events:
                async for event in events:
                    builder.add(event)
        except BaseException:
            with contextlib.suppress(LogFull):  # the run is ending anyway, for its own reason
                builder.end_message()
            raise
        else:
            builder.end_message()
        finally:
            usage.step_count = 1
            usage.prompt_tokens = call.usage.prompt_tokens
            usage.completion_tokens = call.usage.completion_tokens
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        if not builder.tool_calls:
            return "end_turn"
        if spec.max_steps == 1:
            return "max_steps"
        builder.request_approvals()
        return "requires_approval"
