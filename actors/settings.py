"""Settings of the actor layer: where records live, how long logs are kept, the pool, limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rayruns.actors.limits import MAX_RUN_BYTES, MAX_RUN_FRAMES, MAX_RUN_S, RunLimits


class ActorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAYRUNS_", extra="ignore")

    namespace: str = "rayruns"
    registry_name: str = "rayruns-registry"
    db_path: Path = Field(default=Path("~/.rayruns/runs.sqlite3"))
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

    def resolved_db_path(self) -> Path:
        return self.db_path.expanduser().resolve()

    def run_limits(self) -> RunLimits:
        return RunLimits(
            max_run_s=self.max_run_s,
            max_frames=self.max_run_frames,
            max_bytes=self.max_run_bytes,
        )
