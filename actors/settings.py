"""Settings of the actor layer: where records live, how long logs are kept, the pool."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ActorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAYRUNS_", extra="ignore")

    namespace: str = "rayruns"
    registry_name: str = "rayruns-registry"
    db_path: Path = Field(default=Path("~/.rayruns/runs.sqlite3"))
    log_retention_s: float = Field(default=3600.0, gt=0)
    cancel_grace_s: float = Field(default=10.0, gt=0)
    purge_interval_s: float = Field(default=60.0, gt=0)
    pool_size: int = Field(default=4, ge=0)
    pool_idle_s: float = Field(default=30.0, gt=0)
    run_actor_memory_mb: int = Field(default=0, ge=0)

    def resolved_db_path(self) -> Path:
        return self.db_path.expanduser().resolve()
