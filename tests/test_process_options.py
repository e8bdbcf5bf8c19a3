"""How the server's own Ray processes run: two malloc arenas for those that live as long as the
server, and no Ray task events for the calls every run makes (`make soak` measures why)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import psutil
import ray

from rayruns.actors.client import RegistryClient
from rayruns.serve_app.settings import Settings
from tests.conftest import run_actor_names


def _registry_env(registry: Any) -> str | None:
    return os.environ.get("MALLOC_ARENA_MAX")


def test_the_registry_and_the_replicas_run_with_two_malloc_arenas(
    registry: RegistryClient, base_url: str
) -> None:
    assert ray.get(registry.handle.__ray_call__.remote(_registry_env)) == "2"
    replicas = []
    for proc in psutil.process_iter(["cmdline"]):
        if "RunsIngress" in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):  # another test's, ending meanwhile
                replicas.append(proc.environ().get("MALLOC_ARENA_MAX"))
    assert replicas, "no Serve replica of RunsIngress found"
    assert set(replicas) == {"2"}, replicas


def test_calls_on_the_registry_and_the_run_actors_make_no_task_events(
    registry: RegistryClient, base_url: str, settings: Settings
) -> None:
    namespace = settings.actors.namespace
    assert registry.handle._ray_enable_task_events is False
    # A handle looked up by name (as the replica and the batch engine do) keeps the choice.
    again = ray.get_actor(settings.actors.registry_name, namespace=namespace)
    assert again._ray_enable_task_events is False
    names = run_actor_names(namespace)
    assert names, "the pool holds run actors"
    for name in names:
        assert ray.get_actor(name, namespace=namespace)._ray_enable_task_events is False
