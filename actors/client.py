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
from collections.abc import AsyncGenerator
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from rayruns.actors.frames import LoggedFrame
from rayruns.actors.keys import AuthCheck
from rayruns.actors.reader import live_batches
from rayruns.actors.records import Run, RunStatus, terminal_frames
from rayruns.actors.registry import ConversationView, RunRegistry
from rayruns.actors.remote import ActorHandle
from rayruns.actors.run_actor import NotThisRun
from rayruns.actors.settings import ActorSettings
from rayruns.actors.sink import FrameSink
from rayruns.actors.spec import RunSpec
from rayruns.providers.settings import ProviderSettings

log = logging.getLogger(__name__)

# The registry lives on the head node, beside its SQLite file; restarted by Ray if it dies.
RemoteRegistry: Any = ray.remote(RunRegistry)
HEAD_NODE = "node:__internal_head__"  # a resource only the head node has


class UnknownRun(LookupError):
    """No run has this id."""


class RegistryClient:
    """Typed calls on the cluster's `RunRegistry`, and reading runs' frames."""

    def __init__(self, registry: ActorHandle, settings: ActorSettings | None = None) -> None:
        self.handle = registry
        self.settings = settings or ActorSettings()

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
        ).remote(settings, provider_settings)
        return cls(handle, settings)

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.handle, method).remote(*args)
        except RayTaskError as exc:
            # Ray's wrapper subclasses the cause's type; callers get the cause itself.
            raise exc.cause from None

    # -- runs ---------------------------------------------------------------------------

    # `tenant`: act for this API key's tenant, which sees only its own runs (another tenant's
    # run is answered as unknown); None is the trusted view, which sees every run.

    async def create_run(self, spec: RunSpec, tenant: str | None = None) -> tuple[Run, ActorHandle]:
        """Record and start a run: its record and its actor. Raises ConversationBusy, InvalidRun
        (an unknown server tool, approvals that do not fit the conversation), or LiveRunLimit
        (too many live runs: nothing was started; retry after `retry_after_s`)."""
        pending = self.handle.create_run.remote(spec.only_spec(), tenant)
        try:
            run: Run
            run, actor = await pending
        except RayTaskError as exc:
            raise exc.cause from None
        except asyncio.CancelledError:
            # The caller left (e.g. an HTTP client while its run was enqueued): stop waiting
            # for the conversation there too, so no run starts that nobody asked for any more.
            ray.cancel(pending)
            raise
        return run, actor

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
        found: tuple[Run, ActorHandle | None] | None = await self._call("source", run_id, tenant)
        if found is None:
            raise UnknownRun(run_id)
        return found

    async def cancel(self, run_id: str, tenant: str | None = None) -> Run | None:
        """Cancel and return the run once terminal (None: no such run, or another tenant's)."""
        run: Run | None = await self._call("cancel", run_id, tenant)
        return run

    async def authenticate(self, key_hash: str | None) -> AuthCheck:
        """Whether the server needs an API key, and the tenant of the key with this hash."""
        answer: AuthCheck = await self._call("authenticate", key_hash)
        return answer

    def cancel_soon(self, run_id: str) -> None:
        """Send a cancel without waiting for it (a client went away; a batch gave up)."""
        self.handle.cancel.remote(run_id)

    async def wait_terminal(self, run_id: str, timeout_s: float | None = None) -> Run | None:
        """The run's record once terminal, or as it is when `timeout_s` passes (None: no run)."""
        run: Run | None = await self._call("wait_terminal", run_id, timeout_s)
        return run

    async def stored_frames(self, run_id: str) -> list[LoggedFrame] | None:
        """A finished run's log, while it is kept (None: lost with its actor, or expired)."""
        frames: list[LoggedFrame] | None = await self._call("stored_frames", run_id)
        return frames

    async def stream_endings(self, run_id: str) -> list[dict[str, Any]] | None:
        """How each provider stream of a finished run ended."""
        endings: list[dict[str, Any]] | None = await self._call("stream_endings", run_id)
        return endings

    async def stats(self) -> dict[str, int | str]:
        stats: dict[str, int | str] = await self._call("stats")
        return stats

    def wait_ready(self) -> None:
        """Block until the registry answers (from synchronous code, e.g. at start-up)."""
        ray.get(self.handle.stats.remote())

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
        rest = await self._recorded_rest(run_id, after_seq)
        if rest:
            yield rest

    async def sink(self) -> FrameSink | None:
        """This process's frame sink (None: frames are read with Ray calls)."""
        if self.settings.frame_transport != "push":
            return None
        return await FrameSink.for_this_loop(
            self.settings.sink_buffer_bytes, self.settings.sink_queue_batches
        )

    async def _recorded_rest(self, run_id: str, after_seq: int) -> list[LoggedFrame]:
        run = await self.wait_terminal(run_id)
        if run is None:
            raise UnknownRun(run_id)
        frames = await self.stored_frames(run_id)
        if frames is not None:
            return [f for f in frames if f.seq_id > after_seq]
        # Lost with its actor, or past retention: the outcome is all that is left.
        return terminal_frames(run_id, after_seq, run.outcome())
