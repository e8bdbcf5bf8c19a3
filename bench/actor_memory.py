"""USS of an idle run actor: bare, and after a run through each provider's SDK.

    .venv/bin/python -m bench.actor_memory

Each figure is one fresh run actor (its own process): it serves one run through the provider
(the vendors' against the local wire-format server), goes idle, and its USS is read with psutil.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import psutil
import ray
from pydantic import SecretStr

from rayruns.actors.placement import init_ray
from rayruns.actors.remote import new_run_actor
from rayruns.actors.settings import ActorSettings
from rayruns.actors.spec import RunSpec
from rayruns.providers.settings import ProviderSettings
from tests.providers.wire_servers import start_wire_server

KEY = "sk-memory-probe"


async def idle_uss_mb(
    model: str | None, providers: ProviderSettings, actors: ActorSettings
) -> float:
    name = f"rayruns-actor-memory-{(model or 'bare').replace('/', '-')}"
    actor = new_run_actor(name, actors, providers)
    try:
        pid = await actor.ping.remote()
        if model is not None:
            run_id = f"run-memory-{model.replace('/', '-')}"
            spec = RunSpec(model=model, messages=[{"role": "user", "content": "hi"}])
            await actor.start.remote(run_id, spec)
            result = await actor.result.remote(run_id)
            assert result.outcome.stop_reason == "end_turn", result.outcome
            await actor.reset.remote()
        return float(psutil.Process(pid).memory_full_info().uss) / 2**20
    finally:
        ray.kill(actor)


async def measure() -> dict[str, float]:
    server = start_wire_server()
    providers = ProviderSettings()
    for vendor in ("openai", "anthropic", "google"):
        setattr(providers, f"{vendor}_api_key", SecretStr(KEY))
        setattr(providers, f"{vendor}_base_url", server.base_urls[vendor])  # type: ignore[index]
    actors = ActorSettings(db_path=Path(tempfile.mkdtemp()) / "runs.sqlite3")
    try:
        return {
            label: round(await idle_uss_mb(model, providers, actors), 1)
            for label, model in [
                ("bare", None),
                ("fake", "fake/echo"),
                ("openai", "openai/text-3"),
                ("anthropic", "anthropic/text-3"),
                ("google", "google/text-3"),
            ]
        }
    finally:
        server.stop()


def main() -> None:
    init_ray("local", ActorSettings(namespace="rayruns-memory"))
    try:
        print(json.dumps(asyncio.run(measure()), indent=2))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
