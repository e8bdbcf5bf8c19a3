"""Settings of the HTTP layer, and the bundle of all three layers' settings, read once."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rayruns.actors.settings import ActorSettings
from rayruns.providers.settings import ProviderSettings


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAYRUNS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    ping_interval_s: float = Field(default=15.0, gt=0)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_ongoing_requests: int = Field(default=2000, ge=1)
    num_replicas: int = Field(default=1, ge=1)
    app_name: str = "rayruns"
    auth_cache_s: float = Field(default=1.0, ge=0)


class Settings(BaseModel):
    """Everything configurable, from `RAYRUNS_*` environment variables (and SDK fallbacks)."""

    serve: ServeSettings
    actors: ActorSettings
    providers: ProviderSettings

    @classmethod
    def from_env(cls, env_file: Path | None = None) -> Settings:
        """`env_file`: `NAME=value` lines, parsed (never run as shell); the environment wins."""
        return cls(
            serve=ServeSettings(_env_file=env_file),
            actors=ActorSettings(_env_file=env_file),
            providers=ProviderSettings(_env_file=env_file),
        )
