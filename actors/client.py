"""RegistryClient: the one way to the registry actor, for the ingress, the Python API, the batch
engine, the CLI and the tests. No HTTP here.

An exception the registry raises reaches the caller as itself (e.g. `ConversationBusy`), not
wrapped in Ray's `RayTaskError`; Ray's own failures (`RayActorError`: the registry is down or
restarting) pass through as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from rayruns.actors.detached import submit_detached
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.keys import AuthCheck
from rayruns.actors.reader import live_batches
from rayruns.actors.records import Run, RunStatus, terminal_frames
from rayruns.actors.registry import ConversationView, RunRegistry, new_run_id
from rayruns.actors.remote import ActorHandle, long_lived_runtime_env
from rayruns.actors.run_actor import NotThisRun
from rayruns.actors.settings import ActorSettings
from rayruns.actors.sink import FrameSink
from rayruns.actors.spec import RunSpec
from rayruns.providers.settings import ProviderSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# A finished log is read from the store this many frames at a time.
STORED_PAGE = 1000
# A reader finishing from the store outlasts a registry restart this long.
REGISTRY_RESTART_S = 60.0
# Each wait for a run's end is one registry call of at most this long.
WAIT_CALL_S = 60.0
# Run actor handles kept by name: more than the actors a process reads from at once.
ACTOR_CACHE = 4096

# The registry lives on the head node, beside its SQLite file; restarted by Ray if it dies.
RemoteRegistry: Any = ray.remote(RunRegistry)
HEAD_NODE = "node:__internal_head__"  # a resource only the head node has


# Creations whose caller stopped waiting: held until they end, so they are not collected.
_ABANDONED: set[asyncio.Future[Any]] = set()


class UnknownRun(LookupError):
    """No run has this id."""


class RegistryFailed(RuntimeError):
    """The registry could not start (e.g. its database belongs to another registry)."""


class RegistryClient:
    """Typed calls on the cluster's `RunRegistry`, and reading runs' frames."""

    def __init__(self, registry: ActorHandle, settings: ActorSettings | None = None) -> None:
        self.handle = registry
        self.settings = settings or ActorSettings()
        self._actors: OrderedDict[str, ActorHandle] = OrderedDict()

    @classmethod
    def connect(
        cls, settings: ActorSettings, provider_settings: ProviderSettings
    ) -> RegistryClient:
        """The cluster's registry, created on the head node if it is not there yet."""
        handle = RemoteRegistry.options(
            num_cpus=0,
            max_restarts=-1,
            max_concurrency=100_000,
            name=settings.registry_name,
            namespace=settings.namespace,
            lifetime="detached",
            get_if_exists=True,
            resources={HEAD_NODE: 0.001},
            enable_task_events=settings.ray_task_events,
            runtime_env=long_lived_runtime_env(settings),
        ).remote(settings, provider_settings)
        return cls(handle, settings)

    async def _call(self, method: str, *args: Any) -> Any:
        return await _answer(getattr(self.handle, method).remote(*args))

    # -- runs ---------------------------------------------------------------------------

    # `tenant`: act for this API key's tenant, which sees only its own runs (another tenant's
    # run is answered as unknown); None is the trusted view, which sees every run.

    async def create_run(
        self, spec: RunSpec, tenant: str | None = None, run_id: str | None = None
    ) -> tuple[Run, ActorHandle]:
        """Record and start a run: its record and its actor. Raises ConversationBusy, InvalidRun
        (an unknown server tool, approvals that do not fit the conversation), or LiveRunLimit
        (too many live runs: nothing was started; retry after `retry_after_s`).

        With `run_id` (from `new_run_id()`), the caller knows the id before the run exists, so
        it can cancel the run even if it stops waiting for this call."""
        pending = self.handle.create_run.remote(spec.only_spec(), tenant, run_id)
        try:
            return await self._created(pending)
        except asyncio.CancelledError:
            # The caller left (e.g. while its run was enqueued): stop waiting for the
            # conversation there too, so no run starts that nobody asked for any more. A
            # creation past that wait is shielded in the registry and goes on. Not recursive:
            # the calls this one made (a new actor's first ping, a run's start) are not ours.
            ray.cancel(pending, recursive=False)
            raise

    async def create_run_or_cancel(
        self, spec: RunSpec, cancel_if_abandoned: bool, tenant: str | None = None
    ) -> tuple[Run, ActorHandle]:
        """`create_run` for a caller that may be cancelled while it waits (an HTTP request whose
        client leaves, a batch interrupted). If `cancel_if_abandoned`, a wait for the
        conversation's turn is called off and a run already made is cancelled (`cancel_soon`)
        as soon as the registry's call ends; otherwise (a background run) the creation goes
        on, untouched."""
        run_id = new_run_id()
        pending = self.handle.create_run.remote(spec.only_spec(), tenant, run_id)
        try:
            return await self._created(pending)
        except asyncio.CancelledError:
            if cancel_if_abandoned:
                ray.cancel(pending, recursive=False)
                ending = asyncio.ensure_future(self._cancel_once_created(pending, run_id))
                _ABANDONED.add(ending)
                ending.add_done_callback(_ABANDONED.discard)
            raise

    async def _cancel_once_created(self, pending: Any, run_id: str) -> None:
        # The registry's call ends either in its wait for the conversation (no run was made:
        # the cancel finds nothing) or with the run live (the cancel reaches it, even before
        # its actor started it).
        with contextlib.suppress(Exception):
            await pending
        log.info("run %s: its creator left while it was created; cancelling it", run_id)
        self.cancel_soon(run_id)

    async def conversation(
        self, conversation_id: str, tenant: str | None = None
    ) -> ConversationView | None:
        """The conversation's messages and pending calls (None: no run of the tenant used it)."""
        view: ConversationView | None = await self._call("conversation", conversation_id, tenant)
        return view

    async def get(self, run_id: str, tenant: str | None = None) -> Run | None:
        run: Run | None = await self._call("get", run_id, tenant)
        return run

    async def list_runs(
        self,
        conversation_id: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
        tenant: str | None = None,
    ) -> list[Run]:
        runs: list[Run] = await self._call("list_runs", conversation_id, status, limit, tenant)
        return runs

    async def source(
        self, run_id: str, tenant: str | None = None
    ) -> tuple[Run, ActorHandle | None]:
        """The run's record and its live actor (None once it ended). Raises UnknownRun."""
        found: tuple[Run, str | None] | None = await self._call("source", run_id, tenant)
        if found is None:
            raise UnknownRun(run_id)
        run, name = found
        return run, None if name is None else self.run_actor(name)

    async def _created(self, pending: Any) -> tuple[Run, ActorHandle]:
        run: Run
        run, name = await _answer(pending)
        return run, self.run_actor(name)

    def run_actor(self, name: str) -> ActorHandle | None:
        """The run actor called `name` (None: it is gone, and its run is read from the store).

        Looked up by name in Ray (once per actor: pooled actors serve many runs) rather than
        sent by the registry with every run, which would cost the registry memory per run.
        """
        handle = self._actors.get(name)
        if handle is not None:
            self._actors.move_to_end(name)
            return handle
        try:
            handle = ray.get_actor(name, namespace=self.settings.namespace)
        except ValueError:
            return None
        self._actors[name] = handle
        if len(self._actors) > ACTOR_CACHE:
            self._actors.popitem(last=False)
        return handle

    async def cancel(self, run_id: str, tenant: str | None = None) -> Run | None:
        """Cancel and return the run once terminal (None: no such run, or another tenant's)."""
        run: Run | None = await self._call("cancel", run_id, tenant)
        return run

    async def authenticate(self, key_hash: str | None) -> AuthCheck:
        """Whether the server needs an API key, and the tenant of the key with this hash."""
        answer: AuthCheck = await self._call("authenticate", key_hash)
        return answer

    def cancel_soon(self, run_id: str) -> None:
        """Send a cancel without waiting for it (a client went away; a batch gave up). It is
        sent detached: the caller is often being cancelled itself, and Ray's recursive cancel
        would take this call along."""
        submit_detached(self.handle.cancel.remote, run_id)

    async def wait_terminal(self, run_id: str, timeout_s: float | None = None) -> Run | None:
        """The run's record once terminal, or as it is when `timeout_s` passes (None: no run)."""
        run: Run | None = await self._call("wait_terminal", run_id, timeout_s)
        return run

    async def stored_frames(
        self, run_id: str, after_seq: int = 0, limit: int = -1
    ) -> list[LoggedFrame] | None:
        """Up to `limit` (-1: all) frames of a finished run's log after `after_seq`, while it
        is kept (None: lost with its actor, or expired)."""
        frames: list[LoggedFrame] | None = await self._call(
            "stored_frames", run_id, after_seq, limit
        )
        return frames

    async def stream_endings(self, run_id: str) -> list[dict[str, Any]] | None:
        """How each provider stream of a finished run ended."""
        endings: list[dict[str, Any]] | None = await self._call("stream_endings", run_id)
        return endings

    async def stats(self) -> dict[str, int | str]:
        stats: dict[str, int | str] = await self._call("stats")
        return stats

    def wait_ready(self) -> None:
        """Block until the registry answers (from synchronous code, e.g. at start-up). Raises
        RegistryFailed, with the registry's own reason, if it could not start."""
        try:
            ray.get(self.handle.stats.remote())
        except ActorDiedError as exc:
            if not exc.actor_init_failed:
                raise
            raise RegistryFailed(_reason(str(exc))) from None

    async def actor_names(self) -> dict[str, list[str]]:
        names: dict[str, list[str]] = await self._call("actor_names")
        return names

    # -- frames -------------------------------------------------------------------------

    async def follow(
        self, run_id: str, after_seq: int, actor: ActorHandle | None
    ) -> AsyncGenerator[list[LoggedFrame], None]:
        """Batches of the run's frames after `after_seq`: live from `actor`, else from the store.

        Ends after the terminal frames. If the actor dies mid-stream, the reader still gets the
        terminal frames of the run's recorded outcome (numbered on from the last frame it saw).
        """
        if actor is not None:
            live = live_batches(actor, run_id, after_seq, await self.sink())
            try:
                # aclosing: a reader that leaves ends its subscription (or its read) at once.
                async with contextlib.aclosing(live):
                    async for batch in live:
                        after_seq = batch[-1].seq_id
                        yield batch
                return
            except (RayActorError, NotThisRun) as exc:
                # The actor finished and was retired, or died: the registry has the rest.
                log.debug("run %s: actor gone while reading (%s)", run_id, type(exc).__name__)
        async for page in self._recorded_rest(run_id, after_seq):
            yield page

    async def sink(self) -> FrameSink | None:
        """This process's frame sink (None: frames are read with Ray calls)."""
        if self.settings.frame_transport != "push":
            return None
        return await FrameSink.for_this_loop(
            self.settings.sink_buffer_bytes, self.settings.sink_queue_batches
        )

    async def _recorded_rest(
        self, run_id: str, after_seq: int
    ) -> AsyncGenerator[list[LoggedFrame], None]:
        """The rest of a run from its record, a page at a time, through a registry restart."""
        while True:
            run = await self._outlasting_restart(self.wait_terminal, run_id, WAIT_CALL_S)
            if run is None:
                raise UnknownRun(run_id)
            if run.terminal:
                break
        while True:
            page = await self._outlasting_restart(
                self.stored_frames, run_id, after_seq, STORED_PAGE
            )
            if page is None:
                # Lost with its actor, or past retention: the outcome is all that is left.
                yield terminal_frames(run_id, after_seq, run.outcome())
                return
            if page:
                after_seq = page[-1].seq_id
                yield page
            if len(page) < STORED_PAGE:
                return

    async def _outlasting_restart(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        deadline = time.monotonic() + REGISTRY_RESTART_S
        while True:
            try:
                return await call(*args)
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                log.info("the registry is restarting; trying again")
                await asyncio.sleep(0.2)  # a restart has no event a caller can wait on


async def _answer(pending: Any) -> Any:
    """A registry call's result; the registry's own exception, not Ray's wrapper of it."""
    try:
        return await pending
    except RayTaskError as exc:
        # Ray's wrapper subclasses the cause's type; callers get the cause itself.
        raise exc.cause from None


def _reason(message: str) -> str:
    """The exception line of a creation task's traceback, without the exception's module."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        name, sep, text = line.partition(": ")
        if sep and name.replace(".", "").replace("_", "").isalnum() and not name[0].isspace():
            return f"{name.rsplit('.', 1)[-1]}: {text}"
    return lines[-1] if lines else message
