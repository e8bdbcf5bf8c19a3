"""Provider settings: keys, base URLs, timeouts. Read once, passed down."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProviderSettings(BaseSettings):
    """`RAYRUNS_<P>_API_KEY` / `RAYRUNS_<P>_BASE_URL`, falling back to each SDK's own variables."""

    model_config = SettingsConfigDict(env_prefix="RAYRUNS_", extra="ignore", populate_by_name=True)

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("RAYRUNS_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("RAYRUNS_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RAYRUNS_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RAYRUNS_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
    )
    google_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RAYRUNS_GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"),
    )
    google_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RAYRUNS_GOOGLE_BASE_URL", "GOOGLE_GEMINI_BASE_URL"),
    )
    provider_timeout_s: float = Field(default=600.0, gt=0)
    provider_connect_timeout_s: float = Field(default=10.0, gt=0)
    provider_max_retries: int = Field(default=0, ge=0, le=3)
