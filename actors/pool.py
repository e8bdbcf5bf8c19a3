"""A warm pool of run actors, kept by the registry, so that starting a run never waits for a
process. A pooled actor serves one run at a time and is reset before the next.

At least `pool_size` actors are kept idle. Actors coming back from runs join the idle set (the
most recently used is handed out first); those beyond `pool_size` that stay unused for
`pool_idle_s` are ended, so a burst of runs leaves warm actors behind only for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

import ray

from rayruns.actors.detached import spawn_detached
from rayruns.actors.remote import ActorHandle, new_run_actor
from rayruns.actors.settings import ActorSettings
from rayruns.providers.settings import ProviderSettings

log = logging.getLogger(__name__)

ACTOR_PREFIX = "rayruns-actor-"
# New actors that die while starting (a bad node, no memory) are respawned with backoff.
RESPAWN_DELAY_MIN_S = 0.1
RESPAWN_DELAY_MAX_S = 30.0


@dataclass(frozen=True)
class RunActorRef:
    handle: ActorHandle
    name: str


@dataclass(order=True)
class _Idle:
    since: float
    actor: RunActorRef = field(compare=False)


class ActorPool:
    def __init__(self, settings: ActorSettings, provider_settings: ProviderSettings) -> None:
        self._settings = settings
        self._provider_settings = provider_settings
        self._idle: list[_Idle] = []
        self._warming: set[str] = set()
        self._refill_task: asyncio.Task[None] | None = None
        self._trimmer = asyncio.get_running_loop().create_task(self._trim_loop())
        self.replaced = 0
        # Seconds the refill waits before its next spawn: grows while new actors keep dying.
        self.respawn_delay_s = 0.0

    @property
    def size(self) -> int:
        return self._settings.pool_size

    def acquire(self) -> RunActorRef:
        """A warm actor if one is idle, else a new one (which starts cold)."""
        actor = self._idle.pop().actor if self._idle else self.spawn()
        self.refill_soon()
        return actor

    async def release(self, actor: RunActorRef) -> None:
        """Reset a finished run's actor and keep it warm (no pool: let it go)."""
        if self.size == 0:
            # Graceful: runs after the actor's pending calls, so readers drain the last frames.
            actor.handle.__ray_terminate__.remote()
            return
        try:
            await actor.handle.reset.remote()
        except Exception as exc:
            # Dead, or alive in a state it cannot leave (a detached actor outlives us all).
            log.info("run actor %s not reusable (%s); replacing it", actor.name, exc)
            self.discard(actor)
            return
        self._idle.append(_Idle(time.monotonic(), actor))

    def discard(self, actor: RunActorRef) -> None:
        _end(actor)
        self.replaced += 1
        self.refill_soon()

    def refill_soon(self) -> None:
        if self._refill_task is None or self._refill_task.done():
            self._refill_task = spawn_detached(self._refill())

    def adopt_orphans(self, in_use: set[str]) -> None:
        """After a registry restart: actors that no live run uses are the old pool; end them."""
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if (
                entry["namespace"] == self._settings.namespace
                and name.startswith(ACTOR_PREFIX)
                and name not in in_use
            ):
                with contextlib.suppress(ValueError):
                    ray.kill(ray.get_actor(name, namespace=self._settings.namespace))
        self.refill_soon()

    def close(self) -> None:
        """Stop refilling and trimming; end every actor this pool holds or is starting."""
        self._trimmer.cancel()
        if self._refill_task is not None:
            self._refill_task.cancel()
        for name in [i.actor.name for i in self._idle] + sorted(self._warming):
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(name, namespace=self._settings.namespace))
        self._idle.clear()

    def status(self) -> dict[str, int]:
        return {"idle": len(self._idle), "warming": len(self._warming), "replaced": self.replaced}

    def idle_names(self) -> list[str]:
        return [i.actor.name for i in self._idle]

    def warming_names(self) -> list[str]:
        return sorted(self._warming)

    async def _refill(self) -> None:
        while len(self._idle) + len(self._warming) < self.size:
            if self.respawn_delay_s:
                await asyncio.sleep(self.respawn_delay_s)
            actor = self.spawn()
            self._warming.add(actor.name)
            try:
                await actor.handle.ping.remote()
            except Exception as exc:
                # Dead while starting (a bad node, no memory), or its ping failed otherwise (a
                # cancelled call): either way it is not handed out, and not left running.
                _end(actor)
                self.respawn_delay_s = min(
                    max(2 * self.respawn_delay_s, RESPAWN_DELAY_MIN_S), RESPAWN_DELAY_MAX_S
                )
                log.warning(
                    "a new run actor failed while starting (%r); next try in %.1f s",
                    exc,
                    self.respawn_delay_s,
                )
                continue
            finally:
                self._warming.discard(actor.name)
            self.respawn_delay_s = 0.0
            self._idle.append(_Idle(time.monotonic(), actor))

    async def _trim_loop(self) -> None:
        idle_s = self._settings.pool_idle_s
        while True:
            await asyncio.sleep(min(idle_s, 5.0))
            cutoff = time.monotonic() - idle_s
            # The list is oldest-first: the stalest spares go, `size` actors stay.
            while len(self._idle) > self.size and self._idle[0].since < cutoff:
                spare = self._idle.pop(0).actor
                spare.handle.__ray_terminate__.remote()

    def spawn(self) -> RunActorRef:
        """A new actor, outside the pool (it starts cold)."""
        name = f"{ACTOR_PREFIX}{uuid.uuid4().hex}"
        handle = new_run_actor(name, self._settings, self._provider_settings)
        return RunActorRef(handle, name)


def _end(actor: RunActorRef) -> None:
    """Kill an actor at once, whether or not it is still alive."""
    with contextlib.suppress(Exception):
        ray.kill(actor.handle, no_restart=True)
