"""Where run actors go, and the room a Ray started by rayruns itself declares for them.

Each run actor asks one unit of a custom resource (`rayruns_run` by default) and, when set,
its memory. Nodes declare how many runs they host at `ray start --resources`; a node that
declares none (the head, in the cluster configs) hosts no runs. Ray then places run actors
only where there is room and, with the SPREAD strategy, over all such nodes rather than
packing the first one; when every slot is taken, the actor waits unplaced, and the registry
ends the run after `placement_timeout_s` (see `no_room_message`).
"""

from __future__ import annotations

from typing import Any

import ray

from rayruns.actors.settings import ActorSettings


def run_actor_placement(settings: ActorSettings) -> dict[str, Any]:
    """The Ray options that place one run actor."""
    options: dict[str, Any] = {"scheduling_strategy": "SPREAD"}
    if settings.run_resource:
        options["resources"] = {settings.run_resource: 1}
    if settings.run_actor_memory_mb:
        options["memory"] = settings.run_actor_memory_mb * 1024 * 1024
    return options


def local_resources(settings: ActorSettings) -> dict[str, float]:
    """What a one-machine Ray started by rayruns declares: room for `local_run_slots` runs."""
    if not settings.run_resource:
        return {}
    return {settings.run_resource: float(settings.local_run_slots)}


def init_ray(address: str | None, settings: ActorSettings) -> None:
    """Join the Ray cluster at `address`; "local" starts a Ray on this machine with run slots;
    None joins `RAY_ADDRESS` or a `ray start` cluster on this machine, else starts one."""
    common: dict[str, Any] = {"namespace": settings.namespace, "include_dashboard": False}
    if address is None:
        try:
            ray.init(address="auto", **common)
            return
        except ConnectionError:
            address = "local"
    if address == "local":
        ray.init(address="local", resources=local_resources(settings), **common)
    else:
        ray.init(address=address, **common)


def no_room_message(settings: ActorSettings) -> str:
    """Why a run actor stayed unplaced, in the operator's terms."""
    waited = f"no node had room for the run within {settings.placement_timeout_s:g} s"
    resource = settings.run_resource
    if not resource:
        return f"{waited} (Ray could not place its actor)"
    total = ray.cluster_resources().get(resource, 0.0)  # type: ignore[no-untyped-call]
    if total == 0:
        return (
            f"{waited}: no node offers the resource {resource!r}; start run nodes with"
            f" `ray start --resources='{{\"{resource}\": N}}'`"
        )
    return f"{waited}: all {total:g} {resource!r} slots of the cluster are taken"
