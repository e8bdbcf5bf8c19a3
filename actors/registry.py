"""RunRegistry: the single writer of run records, and the keeper of run actors' lives.

Transitions are compare-and-set: created → running → {completed, failed, cancelled}. The first
terminal write wins; later ones are refused (the stored record is returned unchanged, the
refusal counted), here and in SQL. Records are in the database (SQLite, or PostgreSQL with
RAYRUNS_DB_URL: actors/database.py) before a call returns; the store runs in one worker thread,
never on the registry's event loop. The registry watches each run actor: one
that dies mid-run ends its run `failed` / `run_lost`; one that is only unreachable for a while
(`ActorUnavailableError`) is waited for.

A terminal write that fails (database locked or full) still ends the run: the record is written
without its log, and if that fails too it is kept in memory, served from there and written
later; the run's actor, its admission and its conversation are released either way.

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray
from pydantic import BaseModel
from ray.exceptions import ActorUnavailableError, RayActorError

from rayruns.actors.conversation import (
    InvalidContinuation,
    PendingCall,
    RunContext,
    cancelled_wait,
    resolve,
)
from rayruns.actors.database import KeyStorage, RunStorage, open_database
from rayruns.actors.detached import spawn_detached
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.keys import AuthCheck
from rayruns.actors.limits import Admission, RunLimits, default_max_live_runs, timed_out
from rayruns.actors.metrics import registry_metrics
from rayruns.actors.placement import no_room_message
from rayruns.actors.pool import ActorPool, RunActorRef
from rayruns.actors.records import (
    Outcome,
    Run,
    RunError,
    RunStatus,
    Usage,
    terminal_frames,
    utcnow,
)
from rayruns.actors.remote import ActorHandle
from rayruns.actors.server_tools import ToolCatalog
from rayruns.actors.settings import ActorSettings
from rayruns.actors.spec import InvalidRun, RunSpec
from rayruns.actors.store import HistoryUpdate, history_key
from rayruns.actors.tool_requests import ServerToolRef
from rayruns.providers.base import Message
from rayruns.providers.settings import ProviderSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# A run actor that Ray cannot reach (its node's network, a busy raylet) is retried this often
# until Ray either reaches it or declares it dead.
UNAVAILABLE_RETRY_S = 0.5
# How long a killed actor's log may take to fetch before the run is recorded without it.
SNAPSHOT_TIMEOUT_S = 2.0


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
    # A cancel was asked for: an actor that replaces this one is cancelled too.
    cancelled: bool = False

    @property
    def handle(self) -> ActorHandle:
        return self.actor.handle


SAMPLE_INTERVAL_S = 1.0  # how often the live-run and pool gauges are sampled


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex}"


class DuplicateRun(ValueError):
    """A run with this id exists already."""


class RunRegistry:
    def __init__(self, settings: ActorSettings, provider_settings: ProviderSettings) -> None:
        self._settings = settings
        self._provider_settings = provider_settings
        self._incarnation = uuid.uuid4().hex  # tells a restarted registry from its predecessor
        owner = (
            f"registry {settings.registry_name!r} in namespace {settings.namespace!r}"
            f" of the Ray cluster at {_ray_address()}"
        )
        database = open_database(settings)  # SQLite at RAYRUNS_DB_PATH, or RAYRUNS_DB_URL
        self._store: RunStorage = database.run_store(owner)
        try:
            self._keys: KeyStorage = database.key_store()
        except BaseException:
            self._store.close()
            raise
        # One thread: the store's connection is used by one thread at a time, writes in order.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayruns-sqlite")
        # The key store has a connection and a thread of its own: a key check (every request)
        # never queues behind a run write that waits for the database's write lock.
        self._keys_db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayruns-keys")
        self._live: dict[str, _Live] = {}
        self._conversations: dict[tuple[str | None, str], str] = {}
        self._admission = Admission(
            settings.max_live_runs or default_max_live_runs(), settings.max_live_runs_per_tenant
        )
        # Terminal records whose write failed: served from here, written again later.
        self._unwritten: dict[str, _Unwritten] = {}
        self.refused_writes = 0
        self.failed_writes = 0
        self._pool = ActorPool(settings, provider_settings)
        # Loaded here too, so that a request naming an unknown server tool is refused up front.
        self._catalog = ToolCatalog.load(settings.tool_modules)
        self._metrics = registry_metrics()
        self._recover()
        loop = asyncio.get_running_loop()
        self._purger = loop.create_task(self._purge_loop())
        self._sampler = loop.create_task(self._sample_loop())

    async def close(self) -> None:
        """Stop this registry (an in-process one: tests, tools): its tasks, every run actor it
        knows, its store."""
        self._purger.cancel()
        self._sampler.cancel()
        for live in list(self._live.values()):
            if live.watch is not None:
                live.watch.cancel()
            with contextlib.suppress(Exception):
                ray.kill(live.handle, no_restart=True)
        self._live.clear()
        self._pool.close()
        await self._io(self._store.close)
        await self._keys_io(self._keys.close)
        self._db.shutdown()
        self._keys_db.shutdown()

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """A run store call, on the store's thread: never on the registry's event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def _keys_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._keys_db, fn, *args)

    # -- runs ---------------------------------------------------------------------------

    async def create_run(
        self, spec: RunSpec, tenant: str | None = None, run_id: str | None = None
    ) -> tuple[Run, str]:
        """Record a new run, give it an actor and start it; the run and its actor's name.

        Raises InvalidRun (an unknown server tool; approvals or tool messages that do not fit
        the conversation's pending calls), ConversationBusy (with `multitask_strategy`
        `reject`), DuplicateRun, or LiveRunLimit before any actor is taken or spawned.
        `run_id` lets the caller know the id before the call returns (so it can cancel a run
        whose creation it stopped waiting for); by default a new one is made.

        A cancel of this call while it waits for the conversation's turn makes no run; once
        the run holds the conversation, its creation is shielded and goes to the end.
        """
        servers = [t.name for t in spec.tools if isinstance(t, ServerToolRef)]
        unknown = self._catalog.unknown(servers)
        if unknown:
            known = ", ".join(sorted(self._catalog.tools)) or "none (set RAYRUNS_TOOLS)"
            raise InvalidRun(f"tools: no server tool {', '.join(unknown)}; registered: {known}")
        conversation = spec.conversation_id
        if conversation is None and spec.approvals:
            raise InvalidContinuation(
                "approvals: nothing awaits approval in a run without a conversation_id"
            )
        if conversation is not None:
            await self._wait_turn((tenant, conversation), spec)
        # No await from here until the run is live and holds its conversation.
        run_id = run_id or new_run_id()
        if run_id in self._live or run_id in self._unwritten:
            raise DuplicateRun(f"a run {run_id} exists already")
        run = Run(
            id=run_id,
            status="created",
            model=spec.model,
            conversation_id=conversation,
            background=spec.background,
            created_at=utcnow(),
            metadata=spec.metadata,
            tenant=tenant,
        )
        self._admission.admit(run.id, tenant)
        # Live before the first await: a cancel arriving meanwhile finds the run.
        live = self._live[run.id] = _Live(run, self._pool.acquire())
        if conversation is not None:
            self._conversations[(tenant, conversation)] = run.id
        # From here the run is made and started even if the caller gives up (a cancel of this
        # call is meant for the wait above): shielded and detached (a recursive cancel of this
        # call would otherwise reach the start of the run and the pool's refill), so it is
        # never left half-made.
        return await asyncio.shield(spawn_detached(self._create(live, spec)))

    async def _create(self, live: _Live, spec: RunSpec) -> tuple[Run, str]:
        run = live.run
        try:
            context = RunContext.fresh(spec.messages)
            if run.conversation_id is not None:
                key = history_key(run.tenant, run.conversation_id)
                _, pending = await self._io(self._store.pending, key)
                history = [m for _, m in await self._io(self._store.history, key)]
                context = RunContext(history, resolve(pending, spec.approvals, spec.messages))
            await self._io(self._store.insert, run, live.actor.name)
        except BaseException:
            self._release_failed_create(live)
            raise
        return await self._start(live, spec, context)

    def _release_failed_create(self, live: _Live) -> None:
        """The record could not be made: the run never existed; its actor goes back."""
        run = live.run
        del self._live[run.id]
        self._admission.release(run.id)
        if run.conversation_id is not None:
            conversation = (run.tenant, run.conversation_id)
            if self._conversations.get(conversation) == run.id:
                del self._conversations[conversation]
        live.done.set()
        spawn_detached(self._pool.release(live.actor))

    async def _start(self, live: _Live, spec: RunSpec, context: RunContext) -> tuple[Run, str]:
        run = live.run
        limits = self._settings.run_limits()
        # Started before returning, so that a reader's first read never overtakes `start`.
        try:
            try:
                await self._place(live, spec, limits, context)
            except RayActorError:
                # A pooled actor that died while idle, or a new one whose node died before it
                # started: a new one takes over, unless the run ended meanwhile (a cancel that
                # found its actor unresponsive and killed it).
                self._pool.discard(live.actor)
                if live.run.terminal:
                    return live.run, live.actor.name
                live.actor = self._pool.spawn()
                if live.cancelled:  # the cancel went to the dead actor: the new one gets it first
                    live.handle.cancel.remote(run.id)
                await self._io(self._store.set_actor, run.id, live.actor.name)
                await self._place(live, spec, limits, context)
        except RayActorError as exc:
            log.warning("run %s: no run actor could start: %s", run.id, exc)
            await self._finish(run.id, _lost("no run actor could start"), None, [])
            self._pool.discard(live.actor)
            return live.run, live.actor.name
        except TimeoutError:
            # Every slot is taken (or no node hosts runs): Ray keeps the actor unplaced.
            self._pool.discard(live.actor)
            await self._finish(run.id, _lost(no_room_message(self._settings)), None, [])
            return live.run, live.actor.name
        except Exception:
            # Anything else (a start that raised, a cancelled call) must not leave the run
            # live with nobody watching it.
            log.exception("run %s: its actor could not start it", run.id)
            self._pool.discard(live.actor)
            await self._finish(
                run.id, _lost("the run's actor could not start it (see the server's log)"), None, []
            )
            return live.run, live.actor.name
        live.watch = spawn_detached(self._watch(live))
        self._metrics.started.inc()
        return live.run, live.actor.name

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
        used = await self._io(
            lambda: self._store.query(
                conversation_id=conversation_id, status=None, limit=1, tenant=tenant
            )
        )
        if not used:
            return None
        key = history_key(tenant, conversation_id)
        pending_run, pending = await self._io(self._store.pending, key)
        return ConversationView(
            conversation_id=conversation_id,
            messages=await self._io(self._store.history, key),
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
        return _visible(await self._record(run_id), tenant)

    async def list_runs(
        self,
        conversation_id: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
        tenant: str | None = None,
    ) -> list[Run]:
        runs = await self._io(
            lambda: self._store.query(
                conversation_id=conversation_id, status=status, limit=limit, tenant=tenant
            )
        )
        # A record whose terminal write is pending is newer than its stored row.
        return [self._unwritten[r.id].run if r.id in self._unwritten else r for r in runs]

    async def source(self, run_id: str, tenant: str | None = None) -> tuple[Run, str | None] | None:
        """Where a reader finds the run's frames: its live actor's name, or (None) the stored
        log. Names, not handles: each actor handle a Ray call returns costs its sender memory
        that is never given back (~600 B a call, measured), and runs are many."""
        live = self._live.get(run_id)
        if live is not None:
            return (live.run, live.actor.name) if _visible(live.run, tenant) else None
        run = _visible(await self._record(run_id), tenant)
        return None if run is None else (run, None)

    async def stored_frames(
        self, run_id: str, after_seq: int = 0, limit: int = -1
    ) -> list[LoggedFrame] | None:
        """Up to `limit` frames of the finished log after `after_seq`, while it is kept; None
        for a run lost, past retention, or whose log could not be written."""
        return await self._io(self._store.frames, run_id, after_seq, limit)

    async def wait_terminal(self, run_id: str, timeout_s: float | None = None) -> Run | None:
        live = self._live.get(run_id)
        if live is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await live.done.wait()
        return await self.get(run_id)

    async def cancel(self, run_id: str, tenant: str | None = None) -> Run | None:
        """Cancel and return the run once terminal; a terminal run is returned unchanged.

        A cancel asked for is carried out even if its caller stops waiting (a client leaving
        `POST …/cancel`): shielded, and detached from the caller's cancellation."""
        return await asyncio.shield(spawn_detached(self._cancel(run_id, tenant)))

    async def _cancel(self, run_id: str, tenant: str | None) -> Run | None:
        if _visible(await self._record(run_id), tenant) is None:
            return None
        live = self._live.get(run_id)
        if live is None:
            run = await self._record(run_id)
            if run is not None:
                await self._end_wait(run)
            return run
        asked = time.perf_counter()
        live.cancelled = True
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
            await self._kill(live)
        return await self.get(run_id)

    async def _kill(self, live: _Live) -> None:
        """End a run whose actor will not: keep what it logged and counted, then kill it."""
        run_id = live.run.id
        frames: list[LoggedFrame] | None = None
        usage = Usage()
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
                frames, usage = await live.handle.snapshot.remote(run_id)
        except Exception as exc:
            log.warning("run %s: its log could not be fetched before the kill (%r)", run_id, exc)
        outcome = Outcome(stop_reason="cancelled", usage=usage)
        if frames is not None and not (frames and frames[-1].message_type == "usage_statistics"):
            frames = frames + terminal_frames(run_id, len(frames), outcome)
        await self._finish(run_id, outcome, frames, [])
        with contextlib.suppress(Exception):
            ray.kill(live.handle, no_restart=True)

    async def _end_wait(self, run: Run) -> None:
        """A cancel of a run whose calls await approval: each call gets a denial in the history,
        and the conversation no longer waits."""
        conversation = run.conversation_id
        if conversation is None or (run.tenant, conversation) in self._conversations:
            return  # a later run has taken the conversation (and its pending calls) over
        key = history_key(run.tenant, conversation)
        pending_run, pending = await self._io(self._store.pending, key)
        if (run.tenant, conversation) in self._conversations:
            return  # taken over while the pending calls were read
        if pending_run == run.id and pending:
            # Queued on the store's one thread before the history read of any later run.
            await self._io(self._store.close_wait, key, run.id, cancelled_wait(pending))

    async def stream_endings(self, run_id: str) -> list[dict[str, Any]] | None:
        if run_id in self._unwritten:
            return self._unwritten[run_id].stream_endings
        return await self._io(self._store.stream_endings, run_id)

    async def authenticate(self, key_hash: str | None) -> AuthCheck:
        """Whether the server needs a key, and the tenant of the active key with this hash.

        Read from the database on every call: `rayruns keys` writes it directly.
        """
        return await self._keys_io(self._keys.check, key_hash)

    async def stats(self) -> dict[str, int | str]:
        return {
            "live_runs": len(self._live),
            "max_live_runs": self._admission.max_live,
            "peak_live_runs": self._admission.peak,
            "refused_runs": self._admission.refused,
            "refused_writes": self.refused_writes,
            "failed_writes": self.failed_writes,
            "unwritten_records": len(self._unwritten),
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

    async def _record(self, run_id: str) -> Run | None:
        live = self._live.get(run_id)
        if live is not None:
            return live.run
        if run_id in self._unwritten:
            return self._unwritten[run_id].run
        return await self._io(self._store.get, run_id)

    async def _set_running(self, run_id: str) -> None:
        live = self._live.get(run_id)
        if live is not None and live.run.status == "created":
            running = live.run.model_copy(update={"status": "running"})
            live.run = running
            try:
                if not await self._io(self._store.set_running, running):
                    log.warning("run %s was not created any more when it started", run_id)
            except Exception:
                # Not fatal: the terminal write will follow (guarded on created or running).
                log.exception("run %s: recording `running` failed", run_id)

    async def _finish(
        self,
        run_id: str,
        outcome: Outcome,
        frames: list[LoggedFrame] | None,
        stream_endings: list[dict[str, Any]],
        history: HistoryUpdate | None = None,
    ) -> Run:
        """The first terminal outcome of a run wins; the run's actor and conversation are let
        go whether or not its record could be written. `history` (None: the conversation is
        left as it was, e.g. for a run lost with its actor) goes into the conversation in the
        same transaction as the record."""
        live = self._live.get(run_id)
        current = await self._record(run_id)
        assert current is not None, f"unknown run {run_id}"
        if current.terminal:
            self._refused(run_id, outcome, current)
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
        if live is not None:
            live.run = run  # claimed before any await: a second outcome is refused above
        try:
            written = await self._write_terminal(run, frames, stream_endings, history)
        finally:
            if live is not None:
                live.done.set()
                self._live.pop(run_id, None)
            self._admission.release(run_id)
            if run.conversation_id is not None:
                conversation = (run.tenant, run.conversation_id)
                if self._conversations.get(conversation) == run_id:
                    del self._conversations[conversation]
        if written is False:  # another writer (a registry before a restart) ended it first
            stored = await self._io(self._store.get, run_id)
            assert stored is not None
            self._refused(run_id, outcome, stored)
            return stored
        self._metrics.run_ended(run.status, outcome.stop_reason)
        return run

    def _refused(self, run_id: str, outcome: Outcome, current: Run) -> None:
        self.refused_writes += 1
        self._metrics.refused.inc()
        log.debug("refused %s for %s: already %s", outcome.stop_reason, run_id, current.status)

    async def _write_terminal(
        self,
        run: Run,
        frames: list[LoggedFrame] | None,
        stream_endings: list[dict[str, Any]],
        history: HistoryUpdate | None,
    ) -> bool | None:
        """True: written; False: the stored record was terminal already; None: kept in memory
        to be written later (the database failed)."""
        retention = self._settings.log_retention_s
        store = self._store
        try:
            return await self._io(store.finish, run, frames, retention, stream_endings, history)
        except Exception:
            self.failed_writes += 1
            log.exception("run %s: its terminal record and log could not be written", run.id)
        if frames is not None:
            try:
                written = await self._io(
                    store.finish, run, None, retention, stream_endings, history
                )
            except Exception:
                log.exception("run %s: its terminal record could not be written", run.id)
            else:
                log.warning("run %s: recorded %s without its log", run.id, run.status)
                return written
        self._unwritten[run.id] = _Unwritten(run, stream_endings, history)
        return None

    async def _write_unwritten(self) -> None:
        for run_id, unwritten in list(self._unwritten.items()):
            retention = self._settings.log_retention_s
            try:
                await self._io(
                    self._store.finish,
                    unwritten.run,
                    None,
                    retention,
                    unwritten.stream_endings,
                    unwritten.history,
                )
            except Exception as exc:
                log.warning("run %s: its terminal record still cannot be written (%r)", run_id, exc)
                return
            del self._unwritten[run_id]
            log.info("run %s: terminal record written late", run_id)

    # -- watching run actors ---------------------------------------------------------------

    async def _watch(self, live: _Live) -> None:
        run_id = live.run.id
        # The actor ends a run at its age limit itself; this is the backstop for an actor that
        # cannot (a provider that ignores its cancel): past the limit and the cancel grace, the
        # run is recorded as timed out and its actor killed.
        age = (utcnow() - live.run.created_at).total_seconds()
        backstop_s = self._settings.max_run_s - age + self._settings.cancel_grace_s
        try:
            await self._set_running(run_id)
            async with asyncio.timeout(max(backstop_s, 0.0)):
                result = await self._result(live)
        except TimeoutError:
            log.warning("run %s outlived its age limit and its cancel grace; killing it", run_id)
            outcome = Outcome(
                stop_reason="error", usage=Usage(), error=timed_out(self._settings.max_run_s)
            )
            await self._finish(run_id, outcome, None, [])
            self._pool.discard(live.actor)
            return
        except RayActorError as exc:
            log.warning("run %s lost its actor: %s", run_id, exc)
            await self._finish(run_id, _lost("the run's actor died"), None, [])
        except Exception:
            log.exception("run %s: its actor failed", run_id)
            await self._finish(
                run_id, _lost("the run's actor failed (see the server's log)"), None, []
            )
        else:
            history = HistoryUpdate(result.messages, result.pending)
            await self._finish(
                run_id, result.outcome, result.frames, result.stream_endings, history
            )
            if result.abandoned_threads:
                # A sync tool still runs in a thread there: the actor is not handed out again.
                self._pool.discard(live.actor)
                return
        finally:
            live.done.set()
            self._live.pop(run_id, None)
        await self._pool.release(live.actor)

    async def _result(self, live: _Live) -> Any:
        """The actor's FinishedRun. Unavailable is not dead: Ray says which it is, in time."""
        while True:
            try:
                return await live.handle.result.remote(live.run.id)
            except ActorUnavailableError as exc:
                log.warning("run %s: its actor is unreachable; waiting (%s)", live.run.id, exc)
                await asyncio.sleep(UNAVAILABLE_RETRY_S)

    def _recover(self) -> None:
        # At start-up, before the registry takes calls: the store is used directly.
        for run, actor_name in self._store.unfinished():
            handle = None
            if actor_name is not None:
                with contextlib.suppress(ValueError):
                    handle = ray.get_actor(actor_name, namespace=self._settings.namespace)
            if handle is None or actor_name is None:
                self._finish_at_start(
                    run, _lost("the run's actor was gone after a registry restart")
                )
                continue
            live = self._live[run.id] = _Live(run, RunActorRef(handle, actor_name))
            self._admission.adopt(run.id, run.tenant)
            if run.conversation_id is not None:
                self._conversations[(run.tenant, run.conversation_id)] = run.id
            live.watch = asyncio.get_running_loop().create_task(self._watch(live))
        self._pool.adopt_orphans({live.actor.name for live in self._live.values()})
        log.info("registry recovered %d live runs", len(self._live))

    def _finish_at_start(self, run: Run, outcome: Outcome) -> None:
        ended = run.model_copy(
            update={
                "status": outcome.status,
                "stop_reason": outcome.stop_reason,
                "usage": outcome.usage,
                "error": outcome.error,
                "completed_at": utcnow(),
            }
        )
        if self._store.finish(ended, None, self._settings.log_retention_s, []):
            self._metrics.run_ended(ended.status, outcome.stop_reason)

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
            try:
                await self._write_unwritten()
                purged = await self._io(self._store.purge_expired_logs)
                if purged:
                    log.info("purged %d expired frame logs", purged)
                if self._settings.record_retention_s:
                    gone = await self._io(
                        self._store.purge_records, self._settings.record_retention_s
                    )
                    if gone:
                        log.info("purged %d run records past retention", gone)
            except Exception:
                log.exception("purging the run store failed; trying again later")


@dataclass(frozen=True)
class _Unwritten:
    """A terminal record the database refused, kept until it can be written."""

    run: Run
    stream_endings: list[dict[str, Any]]
    history: HistoryUpdate | None


def _ray_address() -> str:
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:
        address = "unknown"
    return str(address)


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
