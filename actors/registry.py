"""RunRegistry: the single writer of run records, and the keeper of run actors' lives.

Transitions are compare-and-set: created → running → {completed, failed, cancelled}. The first
terminal write wins; later ones are refused (the stored record is returned unchanged, the
refusal counted). Records are in SQLite before a call returns. The registry watches each run
actor: one that dies mid-run ends its run `failed` / `run_lost`.

Runs belong to a tenant (an API key's) or to none. A call that names a tenant sees only that
tenant's runs and conversations; `tenant=None` is the trusted view (the Python API, or an open
server) and sees everything. Admission (actors/limits.py) is decided before a run gets an actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
from pydantic import BaseModel
from ray.exceptions import RayActorError

from rayruns.actors.conversation import (
    InvalidContinuation,
    PendingCall,
    RunContext,
    cancelled_wait,
    resolve,
)
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.keys import AuthCheck, KeyStore
from rayruns.actors.limits import Admission, RunLimits, default_max_live_runs, timed_out
from rayruns.actors.metrics import registry_metrics
from rayruns.actors.placement import no_room_message
from rayruns.actors.pool import ActorPool, RunActorRef
from rayruns.actors.records import Outcome, Run, RunError, RunStatus, Usage, utcnow
from rayruns.actors.remote import ActorHandle
from rayruns.actors.server_tools import ToolCatalog
from rayruns.actors.settings import ActorSettings
from rayruns.actors.spec import InvalidRun, RunSpec
from rayruns.actors.store import HistoryUpdate, RunStore, history_key
from rayruns.actors.tool_requests import ServerToolRef
from rayruns.providers.base import Message
from rayruns.providers.settings import ProviderSettings

log = logging.getLogger(__name__)


class ConversationBusy(Exception):
    """The conversation already has an active run."""

    def __init__(self, conversation_id: str, run_id: str) -> None:
        super().__init__(f"conversation {conversation_id!r} has an active run {run_id}")
        self.conversation_id = conversation_id
        self.run_id = run_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.conversation_id, self.run_id))


class ConversationView(BaseModel):
    """A conversation as `GET /v1/conversations/{id}/messages` shows it."""

    conversation_id: str
    messages: list[tuple[str, Message]]  # (the run that added it, the message)
    pending: list[PendingCall]
    pending_run_id: str | None
    active_run_id: str | None


@dataclass
class _Live:
    run: Run
    actor: RunActorRef
    done: asyncio.Event = field(default_factory=asyncio.Event)
    watch: asyncio.Task[None] | None = None

    @property
    def handle(self) -> ActorHandle:
        return self.actor.handle


SAMPLE_INTERVAL_S = 1.0  # how often the live-run and pool gauges are sampled


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex}"


class RunRegistry:
    def __init__(self, settings: ActorSettings, provider_settings: ProviderSettings) -> None:
        self._settings = settings
        self._provider_settings = provider_settings
        self._store = RunStore(settings.resolved_db_path())
        self._keys = KeyStore(settings.resolved_db_path())
        self._live: dict[str, _Live] = {}
        self._conversations: dict[tuple[str | None, str], str] = {}
        self._admission = Admission(
            settings.max_live_runs or default_max_live_runs(), settings.max_live_runs_per_tenant
        )
        self.refused_writes = 0
        self._incarnation = uuid.uuid4().hex  # tells a restarted registry from its predecessor
        self._pool = ActorPool(settings, provider_settings)
        # Loaded here too, so that a request naming an unknown server tool is refused up front.
        self._catalog = ToolCatalog.load(settings.tool_modules)
        self._metrics = registry_metrics()
        self._recover()
        loop = asyncio.get_running_loop()
        self._purger = loop.create_task(self._purge_loop())
        self._sampler = loop.create_task(self._sample_loop())

    # -- runs ---------------------------------------------------------------------------

    async def create_run(self, spec: RunSpec, tenant: str | None = None) -> tuple[Run, ActorHandle]:
        """Record a new run, give it an actor and start it.

        Raises InvalidRun (an unknown server tool; approvals or tool messages that do not fit
        the conversation's pending calls), ConversationBusy (with `multitask_strategy`
        `reject`), or LiveRunLimit before any actor is taken or spawned.
        """
        servers = [t.name for t in spec.tools if isinstance(t, ServerToolRef)]
        unknown = self._catalog.unknown(servers)
        if unknown:
            known = ", ".join(sorted(self._catalog.tools)) or "none (set RAYRUNS_TOOLS)"
            raise InvalidRun(f"tools: no server tool {', '.join(unknown)}; registered: {known}")
        conversation = spec.conversation_id
        context = RunContext.fresh(spec.messages)
        if conversation is None and spec.approvals:
            raise InvalidContinuation(
                "approvals: nothing awaits approval in a run without a conversation_id"
            )
        if conversation is not None:
            await self._wait_turn((tenant, conversation), spec)
            # No await from here until the run holds the conversation.
            key = history_key(tenant, conversation)
            _, pending = self._store.pending(key)
            history = [m for _, m in self._store.history(key)]
            context = RunContext(history, resolve(pending, spec.approvals, spec.messages))
        run = Run(
            id=new_run_id(),
            status="created",
            model=spec.model,
            conversation_id=conversation,
            background=spec.background,
            created_at=utcnow(),
            metadata=spec.metadata,
            tenant=tenant,
        )
        self._admission.admit(run.id, tenant)
        try:
            live = self._live[run.id] = _Live(run, self._pool.acquire())
            self._store.insert(run, live.actor.name)
        except BaseException:
            self._live.pop(run.id, None)
            self._admission.release(run.id)
            raise
        if conversation is not None:
            self._conversations[(tenant, conversation)] = run.id
        # Once recorded, the run starts even if the caller gives up now (a cancel of this call
        # is meant for the wait above): shielded, so it is never left half-started.
        return await asyncio.shield(self._start(live, spec, context))

    async def _start(
        self, live: _Live, spec: RunSpec, context: RunContext
    ) -> tuple[Run, ActorHandle]:
        run = live.run
        limits = self._settings.run_limits()
        # Started before returning, so that a reader's first read never overtakes `start`.
        try:
            try:
                await self._place(live, spec, limits, context)
            except RayActorError:
                # A pooled actor that died while idle, or a new one whose node died before it
                # started: a new one takes over.
                self._pool.discard(live.actor)
                live.actor = self._pool.spawn()
                self._store.set_actor(run.id, live.actor.name)
                await self._place(live, spec, limits, context)
        except RayActorError as exc:
            log.warning("run %s: no run actor could start: %s", run.id, exc)
            lost = _lost("no run actor could start")
            return self._finish(run.id, lost, None, []), live.handle
        except TimeoutError:
            # Every slot is taken (or no node hosts runs): Ray keeps the actor unplaced.
            self._pool.discard(live.actor)
            lost = _lost(no_room_message(self._settings))
            return self._finish(run.id, lost, None, []), live.handle
        live.watch = asyncio.create_task(self._watch(live))
        self._metrics.started.inc()
        return live.run, live.handle

    async def _wait_turn(self, conversation: tuple[str | None, str], spec: RunSpec) -> None:
        """Return once the conversation has no active run, as `multitask_strategy` says."""
        while (active := self._conversations.get(conversation)) is not None:
            if spec.multitask_strategy == "reject":
                raise ConversationBusy(conversation[1], active)
            if spec.multitask_strategy == "interrupt":
                await self.cancel(active)
            else:
                live = self._live.get(active)
                if live is not None:
                    await live.done.wait()
            # Another waiting run may have taken the conversation meanwhile: look again.

    async def conversation(
        self, conversation_id: str, tenant: str | None = None
    ) -> ConversationView | None:
        """A tenant's conversation (None: none of its runs used this id)."""
        if not self._store.query(
            conversation_id=conversation_id, status=None, limit=1, tenant=tenant
        ):
            return None
        key = history_key(tenant, conversation_id)
        pending_run, pending = self._store.pending(key)
        return ConversationView(
            conversation_id=conversation_id,
            messages=self._store.history(key),
            pending=pending,
            pending_run_id=pending_run,
            active_run_id=self._conversations.get((tenant, conversation_id)),
        )

    async def _place(
        self, live: _Live, spec: RunSpec, limits: RunLimits, context: RunContext
    ) -> None:
        """Start the run on its actor, once Ray has placed it (raises TimeoutError if it stays
        unplaced for `placement_timeout_s`)."""
        async with asyncio.timeout(self._settings.placement_timeout_s):
            await live.handle.start.remote(live.run.id, spec, limits, context)

    async def get(self, run_id: str, tenant: str | None = None) -> Run | None:
        return _visible(self._record(run_id), tenant)

    async def list_runs(
        self,
        conversation_id: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
        tenant: str | None = None,
    ) -> list[Run]:
        return self._store.query(
            conversation_id=conversation_id, status=status, limit=limit, tenant=tenant
        )

    async def source(
        self, run_id: str, tenant: str | None = None
    ) -> tuple[Run, ActorHandle | None] | None:
        """Where a reader finds the run's frames: its live actor, or (None) the stored log."""
        live = self._live.get(run_id)
        if live is not None:
            return (live.run, live.handle) if _visible(live.run, tenant) else None
        run = _visible(self._store.get(run_id), tenant)
        return None if run is None else (run, None)

    async def stored_frames(self, run_id: str) -> list[LoggedFrame] | None:
        """The finished log, while it is kept; None for a run lost or past retention."""
        return self._store.frames(run_id)

    async def wait_terminal(self, run_id: str, timeout_s: float | None = None) -> Run | None:
        live = self._live.get(run_id)
        if live is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await live.done.wait()
        return await self.get(run_id)

    async def cancel(self, run_id: str, tenant: str | None = None) -> Run | None:
        """Cancel and return the run once terminal; a terminal run is returned unchanged."""
        if _visible(self._record(run_id), tenant) is None:
            return None
        live = self._live.get(run_id)
        if live is None:
            run = self._store.get(run_id)
            if run is not None:
                self._end_wait(run)
            return run
        asked = time.perf_counter()
        live.handle.cancel.remote(run_id)
        try:
            async with asyncio.timeout(self._settings.cancel_grace_s):
                await live.done.wait()
            self._metrics.cancel_to_done.observe(time.perf_counter() - asked)
        except TimeoutError:
            log.warning(
                "run %s ignored its cancel for %ss; killing its actor",
                run_id,
                self._settings.cancel_grace_s,
            )
            self._finish(live.run.id, Outcome(stop_reason="cancelled", usage=Usage()), None, [])
            ray.kill(live.handle, no_restart=True)
        return await self.get(run_id)

    def _end_wait(self, run: Run) -> None:
        """A cancel of a run whose calls await approval: each call gets a denial in the history,
        and the conversation no longer waits."""
        conversation = run.conversation_id
        if conversation is None or (run.tenant, conversation) in self._conversations:
            return  # a later run has taken the conversation (and its pending calls) over
        key = history_key(run.tenant, conversation)
        pending_run, pending = self._store.pending(key)
        if pending_run == run.id and pending:
            self._store.close_wait(key, run.id, cancelled_wait(pending))

    async def stream_endings(self, run_id: str) -> list[dict[str, Any]] | None:
        return self._store.stream_endings(run_id)

    async def authenticate(self, key_hash: str | None) -> AuthCheck:
        """Whether the server needs a key, and the tenant of the active key with this hash.

        Read from SQLite on every call: `rayruns keys` writes the file directly.
        """
        return self._keys.check(key_hash)

    async def stats(self) -> dict[str, int | str]:
        return {
            "live_runs": len(self._live),
            "max_live_runs": self._admission.max_live,
            "peak_live_runs": self._admission.peak,
            "refused_runs": self._admission.refused,
            "refused_writes": self.refused_writes,
            "incarnation": self._incarnation,
            "pid": os.getpid(),
            **self._pool.status(),
        }

    async def actor_names(self) -> dict[str, list[str]]:
        """Which run actors exist: idle in the pool, starting for it, or serving a run."""
        return {
            "idle": self._pool.idle_names(),
            "warming": self._pool.warming_names(),
            "busy": [live.actor.name for live in self._live.values()],
        }

    # -- the one door for transitions ----------------------------------------------------

    def _record(self, run_id: str) -> Run | None:
        live = self._live.get(run_id)
        return live.run if live is not None else self._store.get(run_id)

    def _set_running(self, run_id: str) -> None:
        live = self._live.get(run_id)
        if live is not None and live.run.status == "created":
            live.run = live.run.model_copy(update={"status": "running"})
            self._store.update(live.run)

    def _finish(
        self,
        run_id: str,
        outcome: Outcome,
        frames: list[LoggedFrame] | None,
        stream_endings: list[dict[str, Any]],
        history: HistoryUpdate | None = None,
    ) -> Run:
        """Record the terminal state; `history` (None: the conversation is left as it was, e.g.
        for a run lost with its actor) goes into the conversation in the same transaction."""
        live = self._live.get(run_id)
        current = self._record(run_id)
        assert current is not None, f"unknown run {run_id}"
        if current.terminal:
            self.refused_writes += 1
            self._metrics.refused.inc()
            log.debug("refused %s for %s: already %s", outcome.stop_reason, run_id, current.status)
            return current
        run = current.model_copy(
            update={
                "status": outcome.status,
                "stop_reason": outcome.stop_reason,
                "usage": outcome.usage,
                "error": outcome.error,
                "completed_at": utcnow(),
            }
        )
        self._store.finish(run, frames, self._settings.log_retention_s, stream_endings, history)
        self._metrics.run_ended(run.status, outcome.stop_reason)
        if live is not None:
            live.run = run
            live.done.set()
            del self._live[run_id]
        self._admission.release(run_id)
        if run.conversation_id is not None:
            conversation = (run.tenant, run.conversation_id)
            if self._conversations.get(conversation) == run_id:
                del self._conversations[conversation]
        return run

    # -- watching run actors ---------------------------------------------------------------

    async def _watch(self, live: _Live) -> None:
        run_id = live.run.id
        # The actor ends a run at its age limit itself; this is the backstop for an actor that
        # cannot (a provider that ignores its cancel): past the limit and the cancel grace, the
        # run is recorded as timed out and its actor killed.
        age = (utcnow() - live.run.created_at).total_seconds()
        backstop_s = self._settings.max_run_s - age + self._settings.cancel_grace_s
        try:
            self._set_running(run_id)
            async with asyncio.timeout(max(backstop_s, 0.0)):
                result = await live.handle.result.remote(run_id)
        except TimeoutError:
            log.warning("run %s outlived its age limit and its cancel grace; killing it", run_id)
            outcome = Outcome(
                stop_reason="error", usage=Usage(), error=timed_out(self._settings.max_run_s)
            )
            self._finish(run_id, outcome, None, [])
            self._pool.discard(live.actor)
            return
        except RayActorError as exc:
            log.warning("run %s lost its actor: %s", run_id, exc)
            self._finish(run_id, _lost("the run's actor died"), None, [])
        except Exception:
            log.exception("run %s: its actor failed", run_id)
            self._finish(run_id, _lost("the run's actor failed (see the server's log)"), None, [])
        else:
            history = HistoryUpdate(result.messages, result.pending)
            self._finish(run_id, result.outcome, result.frames, result.stream_endings, history)
            if result.abandoned_threads:
                # A sync tool still runs in a thread there: the actor is not handed out again.
                self._pool.discard(live.actor)
                return
        finally:
            live.done.set()
        await self._pool.release(live.actor)

    def _recover(self) -> None:
        for run, actor_name in self._store.unfinished():
            handle = None
            if actor_name is not None:
                with contextlib.suppress(ValueError):
                    handle = ray.get_actor(actor_name, namespace=self._settings.namespace)
            if handle is None or actor_name is None:
                lost = _lost("the run's actor was gone after a registry restart")
                self._finish(run.id, lost, None, [])
                continue
            live = self._live[run.id] = _Live(run, RunActorRef(handle, actor_name))
            self._admission.adopt(run.id, run.tenant)
            if run.conversation_id is not None:
                self._conversations[(run.tenant, run.conversation_id)] = run.id
            live.watch = asyncio.get_running_loop().create_task(self._watch(live))
        self._pool.adopt_orphans({live.actor.name for live in self._live.values()})
        log.info("registry recovered %d live runs", len(self._live))

    async def _sample_loop(self) -> None:
        # Sampled rather than set at each change: the pool changes state in many places, and
        # Ray exports gauges every few seconds anyway.
        while True:
            pool = self._pool.status()
            self._metrics.sample(len(self._live), pool["idle"], pool["warming"])
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.purge_interval_s)
            purged = self._store.purge_expired_logs()
            if purged:
                log.info("purged %d expired frame logs", purged)


def _visible(run: Run | None, tenant: str | None) -> Run | None:
    """The run if the caller may see it: the trusted view (None) sees every run."""
    if run is None or tenant is None or run.tenant == tenant:
        return run
    return None


def _lost(message: str) -> Outcome:
    return Outcome(
        stop_reason="error",
        usage=Usage(),
        error=RunError(error_type="run_lost", message=message),
    )
