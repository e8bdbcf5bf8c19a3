"""Limits on runs: how many may be live (server-wide and per tenant), and how far one may go.

Admission is decided by the registry before a run gets an actor, so a refused run never costs a
process. A run's own limits (age, frames, bytes) travel with it to its actor.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Literal

import ray
from pydantic import BaseModel

from rayruns.actors.records import RunError

# What one run actor costs (bench/actor_memory.py measures 50 to 100 MB, SDKs loaded).
RUN_ACTOR_FOOTPRINT_BYTES = 100 * 1024 * 1024
MEMORY_SHARE = 0.5  # of the cluster's memory that live run actors may take by default
DEFAULT_LIVE_FLOOR, DEFAULT_LIVE_CAP = 4, 1000
RETRY_AFTER_S = 1
MAX_RUN_S = 3600.0
MAX_RUN_FRAMES = 100_000
MAX_RUN_BYTES = 64 * 1024 * 1024


class LiveRunLimit(Exception):
    """Too many live runs, server-wide or for the caller's tenant: retry after `retry_after_s`."""

    def __init__(
        self, scope: Literal["server", "tenant"], limit: int, retry_after_s: int = RETRY_AFTER_S
    ) -> None:
        whose = "this server" if scope == "server" else "this tenant"
        super().__init__(
            f"too many live runs: {whose} allows {limit} at once; retry after {retry_after_s} s"
        )
        self.scope = scope
        self.limit = limit
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.scope, self.limit, self.retry_after_s))


class RunLimits(BaseModel):
    """How far one run may go; crossing a limit ends it with a terminal error."""

    max_run_s: float = MAX_RUN_S
    max_frames: int = MAX_RUN_FRAMES
    max_bytes: int = MAX_RUN_BYTES


def default_max_live_runs() -> int:
    """A share of the cluster's memory (Ray's `memory` resource) over one run actor's footprint."""
    memory = 0.0
    if ray.is_initialized():
        memory = float(ray.cluster_resources().get("memory", 0.0))  # type: ignore[no-untyped-call]
    if memory <= 0:
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    share = int(memory * MEMORY_SHARE / RUN_ACTOR_FOOTPRINT_BYTES)
    return max(DEFAULT_LIVE_FLOOR, min(DEFAULT_LIVE_CAP, share))


def timed_out(max_run_s: float) -> RunError:
    return RunError(
        error_type="run_timeout",
        message=f"the run was ended at its age limit of {max_run_s:g} s (RAYRUNS_MAX_RUN_S)",
    )


def output_limit(why: str) -> RunError:
    return RunError(
        error_type="run_output_limit",
        message=f"{why} (RAYRUNS_MAX_RUN_FRAMES / RAYRUNS_MAX_RUN_BYTES); it was ended",
    )


class Admission:
    """Counts live runs, by tenant; refuses one past either limit.

    Runs without a tenant (the trusted Python API, or an open server) count only server-wide.
    """

    def __init__(self, max_live: int, max_per_tenant: int | None) -> None:
        self.max_live = max_live
        self.max_per_tenant = max_per_tenant
        self._tenant_of: dict[str, str | None] = {}
        self._per_tenant: Counter[str] = Counter()
        self.peak = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._tenant_of)

    def admit(self, run_id: str, tenant: str | None) -> None:
        """Count the run in, or raise LiveRunLimit."""
        if len(self._tenant_of) >= self.max_live:
            self.refused += 1
            raise LiveRunLimit("server", self.max_live)
        if (
            tenant is not None
            and self.max_per_tenant is not None
            and self._per_tenant[tenant] >= self.max_per_tenant
        ):
            self.refused += 1
            raise LiveRunLimit("tenant", self.max_per_tenant)
        self.adopt(run_id, tenant)

    def adopt(self, run_id: str, tenant: str | None) -> None:
        """Count a run in unconditionally (runs found live after a registry restart)."""
        self._tenant_of[run_id] = tenant
        if tenant is not None:
            self._per_tenant[tenant] += 1
        self.peak = max(self.peak, len(self._tenant_of))

    def release(self, run_id: str) -> None:
        if run_id not in self._tenant_of:
            return
        tenant = self._tenant_of.pop(run_id)
        if tenant is not None:
            self._per_tenant[tenant] -= 1
            if self._per_tenant[tenant] <= 0:
                del self._per_tenant[tenant]
