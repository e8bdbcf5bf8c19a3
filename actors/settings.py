"""Settings of the actor layer: where records live, how long logs are kept, the pool, limits,
tools, placement."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PostgresDsn, UrlConstraints
from pydantic_settings import BaseSettings, SettingsConfigDict

from rayruns.actors.limits import MAX_RUN_BYTES, MAX_RUN_FRAMES, MAX_RUN_S, RunLimits


class ActorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAYRUNS_", extra="ignore")

    namespace: str = "rayruns"
    registry_name: str = "rayruns-registry"
    db_path: Path = Field(default=Path("~/.rayruns/runs.sqlite3"))
    # PostgreSQL instead of the SQLite file at db_path: records, logs, conversations and keys
    # (actors/database.py). postgresql://user:password@host:port/database
    db_url: (
        Annotated[PostgresDsn, UrlConstraints(allowed_schemes=["postgresql", "postgres"])] | None
    ) = None
    log_retention_s: float = Field(default=3600.0, gt=0)
    cancel_grace_s: float = Field(default=10.0, gt=0)
    purge_interval_s: float = Field(default=60.0, gt=0)
    # Run records are removed this long after their run ended (0: kept forever).
    record_retention_s: float = Field(default=30 * 86400.0, ge=0)
    pool_size: int = Field(default=4, ge=0)
    pool_idle_s: float = Field(default=30.0, gt=0)
    run_actor_memory_mb: int = Field(default=0, ge=0)
    # Limits (actors/limits.py). None: a share of the cluster's memory over an actor's footprint.
    max_live_runs: int | None = Field(default=None, ge=1)
    max_live_runs_per_tenant: int | None = Field(default=None, ge=1)
    max_run_s: float = Field(default=MAX_RUN_S, gt=0)
    max_run_frames: int = Field(default=MAX_RUN_FRAMES, ge=10)
    max_run_bytes: int = Field(default=MAX_RUN_BYTES, ge=4096)
    # Server tools: comma-separated import paths of the modules that hold them.
    tools: str = ""
    tool_timeout_s: float = Field(default=30.0, gt=0)

    @property
    def tool_modules(self) -> list[str]:
        return [m.strip() for m in self.tools.split(",") if m.strip()]

    # Placement (actors/placement.py): the custom resource one run actor takes a unit of ("" for
    # none), the slots a Ray started by rayruns itself declares, and how long a run waits for
    # a slot before it ends `failed`.
    run_resource: str = Field(default="rayruns_run", pattern=r"^[A-Za-z0-9_.-]*$", max_length=128)
    local_run_slots: int = Field(default=256, ge=1)
    placement_timeout_s: float = Field(default=60.0, gt=0)
    # How readers take a live run's frames: pushed by the run actor to the reader process's
    # sink over a socket ("push"), or pulled with one Ray call per batch ("read").
    frame_transport: Literal["push", "read"] = "push"
    # Push: unsent bytes a run actor holds for one reader before dropping it (the reader then
    # catches up with `read`), and batches a sink queues for one reader before it stops
    # reading that reader's socket.
    sink_buffer_bytes: int = Field(default=1024 * 1024, ge=64 * 1024)
    sink_queue_batches: int = Field(default=64, ge=2)
    # Ray task events (the dashboard's task list, `ray list tasks`) for the calls on the registry
    # and the run actors. Off by default, as Serve has them off for its request calls: every run
    # makes several such calls, and Ray's GCS keeps up to 100,000 tasks' events in its memory.
    ray_task_events: bool = False
    # glibc malloc arenas of the registry and the Serve replicas (actors/remote.py); 0: glibc's
    # default (8 per core).
    malloc_arena_max: int = Field(default=2, ge=0)

    def resolved_db_path(self) -> Path:
        return self.db_path.expanduser().resolve()

    def run_limits(self) -> RunLimits:
        return RunLimits(
            max_run_s=self.max_run_s,
            max_frames=self.max_run_frames,
            max_bytes=self.max_run_bytes,
        )
