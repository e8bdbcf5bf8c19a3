"""The body of `POST /v1/runs` (and of each `rayruns batch` input line)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from rayruns.actors.frames import CONTENT_TYPES
from rayruns.actors.spec import RunSpec

# Checked by `check_message_types` (its message names the unknown ones); the enum is for the schema.
MessageTypes = list[Annotated[str, Field(json_schema_extra={"enum": sorted(CONTENT_TYPES)})]]


class RunBody(RunSpec):
    """The body of `POST /v1/runs`: a run spec, and how this response delivers its frames."""

    stream: bool = True
    include_pings: bool = True
    include_return_message_types: MessageTypes | None = None

    @field_validator("include_return_message_types")
    @classmethod
    def _known_types(cls, value: list[str] | None) -> list[str] | None:
        return check_message_types(value)


def check_message_types(value: list[str] | None) -> list[str] | None:
    """Content message types a reader asks for; raises ValueError naming unknown ones."""
    if value is not None:
        unknown = sorted(set(value) - CONTENT_TYPES)
        if unknown:
            known = ", ".join(sorted(CONTENT_TYPES))
            raise ValueError(f"unknown message types {unknown}; known: {known}")
    return value
