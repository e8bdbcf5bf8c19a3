"""How the actor classes run on Ray: options chosen once, here."""

from __future__ import annotations

from typing import Any

import ray

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


def new_run_actor(
    name: str, settings: ActorSettings, provider_settings: ProviderSettings
) -> ActorHandle:
    options = {**RUN_ACTOR_OPTIONS, "name": name, "namespace": settings.namespace}
    if settings.run_actor_memory_mb:
        options["memory"] = settings.run_actor_memory_mb * 1024 * 1024
    return RemoteRunActor.options(**options).remote(provider_settings, settings)
