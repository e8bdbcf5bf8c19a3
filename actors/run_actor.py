"""RunActor: owns one run at a time — its provider stream, its cancel event and its frame log.

The pump runs the provider in its own task, so no reader can stop it; readers follow the log
from any `seq_id`: pushed to their process's sink after one `attach` (actors/push.py), or pulled
with `read`, each getting everything logged since its last batch as one batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict
from typing import Any

import ray
from pydantic import BaseModel

from rayruns.actors.agent_loop import AgentLoop
from rayruns.actors.conversation import PendingCall, RunContext
from rayruns.actors.frame_builder import FrameBuilder
from rayruns.actors.frame_log import FrameLog, LogFull
from rayruns.actors.frames import LoggedFrame, StopReason
from rayruns.actors.limits import RunLimits, output_limit, timed_out
from rayruns.actors.metrics import run_actor_metrics
from rayruns.actors.push import Pusher
from rayruns.actors.records import Outcome, RunError, Usage, terminal_frames
from rayruns.actors.server_tools import ToolCatalog
from rayruns.actors.settings import ActorSettings
from rayruns.actors.spec import RunSpec
from rayruns.actors.wire import SinkAddress
from rayruns.providers.base import Message, Provider, ProviderCall, RunCancelled
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
    messages: list[Message] = []  # what the run adds to its conversation, in order
    pending: list[PendingCall] = []  # calls awaiting the client (`requires_approval`)
    abandoned_threads: int = 0  # sync tools left running: the actor is not reused


class NotThisRun(LookupError):
    """The actor is not (or no longer) running the run asked about."""


class RunActor:
    """An async Ray actor (see `actors.remote`). One run at a time; `reset` readies the next."""

    def __init__(
        self, provider_settings: ProviderSettings, actor_settings: ActorSettings | None = None
    ) -> None:
        self._settings = provider_settings
        actor_settings = actor_settings or ActorSettings()
        self._tool_timeout_s = actor_settings.tool_timeout_s
        self._catalog = ToolCatalog.load(actor_settings.tool_modules)
        self._cancelled_ids: set[str] = set()
        # Providers hold SDK clients and their connection pools, no run state: kept across runs.
        self._providers: dict[str, Provider] = {}
        self._metrics = run_actor_metrics()
        self._pusher = Pusher()
        self._clear()

    def _clear(self) -> None:
        self._run_id: str | None = None
        self._cancel = asyncio.Event()
        self._log = FrameLog(on_frames=self._count_frames)
        self._started = time.perf_counter()
        self._first_frame_seen = False
        self._pusher.follow(self._log)  # readers of the last run are dropped
        self._calls: list[ProviderCall] = []
        self._result: FinishedRun | None = None
        self._done = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._timed_out: float | None = None  # the age limit the run reached

    async def start(
        self,
        run_id: str,
        spec: RunSpec,
        limits: RunLimits | None = None,
        context: RunContext | None = None,
    ) -> None:
        if self._run_id is not None:
            raise RuntimeError(f"actor is busy with {self._run_id}; cannot start {run_id}")
        self._run_id = run_id
        limits = limits or RunLimits()
        self._log = FrameLog(limits.max_frames, limits.max_bytes, on_frames=self._count_frames)
        self._started = time.perf_counter()
        self._pusher.follow(self._log)
        if run_id in self._cancelled_ids:
            self._cancel.set()
        # The age limit ends a run through its cancel event: the same path that reliably closes
        # a provider stream mid-await, then recorded as a timeout instead of a cancel.
        self._deadline = asyncio.get_running_loop().call_later(
            limits.max_run_s, self._expire, limits.max_run_s
        )
        context = context or RunContext.fresh(spec.messages)
        self._pump = asyncio.create_task(self._run(run_id, spec, context), name=f"pump {run_id}")

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

    async def attach(
        self, run_id: str, sink: SinkAddress, subscription_id: str, after_seq: int
    ) -> None:
        """Push the frames after `after_seq`, then each new batch, to `sink` until the log
        closes, the reader leaves, its buffer overflows, or a reset. Raises NotThisRun,
        SinkRefused (wrong secret or unknown subscription) or OSError (sink unreachable)."""
        self._check(run_id)
        if not await self._pusher.attach(self._log, sink, subscription_id, after_seq):
            raise NotThisRun(f"this actor is no longer running {run_id}")  # reset meanwhile

    async def subscriptions(self) -> dict[str, int]:
        """Readers attached now (those still draining their last batch included), and how
        many were dropped for falling behind."""
        return {"attached": len(self._pusher), "dropped": self._pusher.dropped}

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

    async def node_id(self) -> str:
        """The Ray node this actor runs on (hex): where placement put it."""
        node: str = ray.get_runtime_context().get_node_id()
        return node

    def _count_frames(self, count: int) -> None:
        if not self._first_frame_seen:
            self._first_frame_seen = True
            self._metrics.first_frame.observe(time.perf_counter() - self._started)
        self._metrics.frames.inc(count)

    def _check(self, run_id: str) -> None:
        if run_id != self._run_id:
            raise NotThisRun(f"this actor is not running {run_id}")

    async def _run(self, run_id: str, spec: RunSpec, context: RunContext) -> None:
        builder = FrameBuilder(run_id, self._log, stream_tokens=spec.stream_tokens)
        error: RunError | None = None
        stop: StopReason
        loop: AgentLoop | None = None
        try:
            loop = AgentLoop(
                run_id,
                spec,
                self._provider(spec.target.provider),
                builder,
                self._cancel,
                self._catalog,
                self._tool_timeout_s,
                context.history,
                self._calls.append,
            )
            stop = await loop.run(context.continuation)
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
        usage = loop.usage if loop is not None else Usage()
        outcome = Outcome(stop_reason=stop, usage=usage, error=error)
        self._log.extend(terminal_frames(run_id, self._log.next_seq - 1, outcome))
        self._log.close()
        self._result = FinishedRun(
            run_id=run_id,
            outcome=outcome,
            frames=self._log.snapshot(),
            stream_endings=[asdict(call.ending) for call in self._calls],
            messages=loop.new if loop is not None else [],
            pending=loop.pending if loop is not None and stop == "requires_approval" else [],
            abandoned_threads=loop.abandoned_threads if loop is not None else 0,
        )
        self._done.set()

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = make_provider(name, self._settings)
        return provider
