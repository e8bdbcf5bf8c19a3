"""The Python API over the actors: what the Serve app and batch scripts use. No HTTP here."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import ray
from ray.exceptions import RayActorError

from rayruns.actors.frames import LoggedFrame
from rayruns.actors.records import Run, RunRequest, terminal_frames
from rayruns.actors.registry import RunRegistry
from rayruns.actors.remote import ActorHandle
from rayruns.actors.run_actor import NotThisRun
from rayruns.actors.settings import ActorSettings
from rayruns.providers.settings import ProviderSettings

log = logging.getLogger(__name__)

# The registry lives on the head node, beside its SQLite file; restarted by Ray if it dies.
RemoteRegistry: Any = ray.remote(RunRegistry)


def connect_registry(settings: ActorSettings, provider_settings: ProviderSettings) -> ActorHandle:
    """Get the cluster's registry, creating it on the head node if it is not there yet."""
    return RemoteRegistry.options(
        num_cpus=0,
        max_restarts=-1,
        max_concurrency=100_000,
        name=settings.registry_name,
        namespace=settings.namespace,
        lifetime="detached",
        get_if_exists=True,
        resources={"node:__internal_head__": 0.001},
    ).remote(settings, provider_settings)


class UnknownRun(LookupError):
    """No run has this id."""


async def follow(
    registry: ActorHandle,
    run_id: str,
    after_seq: int,
    actor: ActorHandle | None,
) -> AsyncGenerator[list[LoggedFrame], None]:
    """Batches of the run's frames after `after_seq`: live from `actor`, else from the store.

    Ends after the terminal frames. If the actor dies mid-stream, the reader still gets the
    terminal frames of the run's recorded outcome (numbered on from the last frame it saw).
    """
    if actor is not None:
        # Long-poll `read` rather than the `subscribe` stream: each read returns everything
        # logged since the last one, so a reader that falls behind (a busy ingress) gets bigger
        # batches instead of an ever longer queue of one-frame objects (bench/README.md).
        pending = None
        try:
            while True:
                pending = actor.read.remote(run_id, after_seq)
                batch: list[LoggedFrame]
                batch, closed = await pending
                pending = None
                if batch:
                    after_seq = batch[-1].seq_id
                    yield batch
                if closed:
                    return
        except (RayActorError, NotThisRun) as exc:
            # The actor finished and was retired, or died: the registry has the rest.
            log.debug("run %s: actor gone while reading (%s)", run_id, type(exc).__name__)
        finally:
            if pending is not None:  # the reader went away mid-read: stop waiting in the actor
                ray.cancel(pending)
    rest = await _recorded_rest(registry, run_id, after_seq)
    if rest:
        yield rest


async def _recorded_rest(registry: ActorHandle, run_id: str, after_seq: int) -> list[LoggedFrame]:
    run: Run | None = await registry.wait_terminal.remote(run_id)
    if run is None:
        raise UnknownRun(run_id)
    frames: list[LoggedFrame] | None = await registry.stored_frames.remote(run_id)
    if frames is not None:
        return [f for f in frames if f.seq_id > after_seq]
    # Lost with its actor, or past retention: the outcome is all that is left.
    return terminal_frames(run_id, after_seq, run.outcome())


async def find_run(registry: ActorHandle, run_id: str) -> tuple[Run, ActorHandle | None]:
    """The run's record and its live actor (None once it ended). Raises UnknownRun."""
    found: tuple[Run, ActorHandle | None] | None = await registry.source.remote(run_id)
    if found is None:
        raise UnknownRun(run_id)
    return found


async def start_run(registry: ActorHandle, request: RunRequest) -> tuple[Run, ActorHandle]:
    run: Run
    run, actor = await registry.create_run.remote(request)
    return run, actor
