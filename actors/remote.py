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


def new_run_actor(
    name: str, settings: ActorSettings, provider_settings: ProviderSettings
) -> ActorHandle:
    options = {
        **RUN_ACTOR_OPTIONS,
        **run_actor_placement(settings),
        "name": name,
        "namespace": settings.namespace,
    }
    return RemoteRunActor.options(**options).remote(provider_settings, settings)
