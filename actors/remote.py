"""How the actor classes run on Ray: options chosen once, here."""

from __future__ import annotations

from typing import Any

import ray

from rayruns.actors.placement import run_actor_placement
from rayruns.actors.run_actor import RunActor
from rayruns.actors.settings import ActorSettings
from rayruns.providers.settings import ProviderSettings

ActorHandle = Any  # ray.actor.ActorHandle: untyped in Ray

# Run methods are never retried: Ray would replay a stream from the start, calling the
# provider twice. Detached, so no Serve replica or driver owns a run's life.
RemoteRunActor: Any = ray.remote(RunActor)
RUN_ACTOR_OPTIONS: dict[str, Any] = {
    "num_cpus": 0,
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": 100_000,
    "lifetime": "detached",
}


def long_lived_runtime_env(settings: ActorSettings) -> dict[str, Any]:
    """The runtime_env of the processes that serve Ray calls for the server's whole life.

    glibc's malloc gives each thread that allocates its own arena, up to 8 per core, and a
    process serving Ray calls runs some 28 threads: freed memory stays behind in every arena.
    Measured in a soak: the registry's freed-but-held malloc memory grew 11 -> 22 MiB in 7.5
    minutes while the memory it used stayed at 24 MiB; with two arenas it stayed under 5 MiB."""
    if not settings.malloc_arena_max:
        return {}
    return {"env_vars": {"MALLOC_ARENA_MAX": str(settings.malloc_arena_max)}}


def new_run_actor(
    name: str, settings: ActorSettings, provider_settings: ProviderSettings
) -> ActorHandle:
    options = {
        **RUN_ACTOR_OPTIONS,
        **run_actor_placement(settings),
        "name": name,
        "namespace": settings.namespace,
        "enable_task_events": settings.ray_task_events,
    }
    return RemoteRunActor.options(**options).remote(provider_settings, settings)
