"""RunSpec: what a run actor needs to run a model, checked once when the spec is made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, to_json

from rayruns.actors.tool_requests import Approval, MultitaskStrategy, RequestTool
from rayruns.providers.base import JsonInt, Message, ToolChoice
from rayruns.providers.catalog import parse_options, split_model
from rayruns.providers.errors import InvalidProviderOptions, UnknownProvider

ID_MAX = 128
METADATA_MAX_BYTES = 16 * 1024

# The error types a spec's validation reports for the model and its options, so that a caller
# (the HTTP edge) can tell them from the shape errors.
UNKNOWN_PROVIDER = "unknown_provider"
INVALID_PROVIDER_OPTIONS = "invalid_provider_options"

# Fields of a `POST /v1/runs` body that say how the HTTP response delivers frames: a spec made
# from such a body leaves them out.
DELIVERY_FIELDS = frozenset({"stream", "include_pings", "include_return_message_types"})


# A run has something to do: a message, or (continuing a conversation) a decision.
MESSAGES_OR_APPROVALS: list[Any] = [
    {"properties": {"messages": {"minItems": 1}}},
    {"properties": {"approvals": {"minItems": 1}}, "required": ["approvals"]},
]


class InvalidRun(ValueError):
    """A well-formed spec the runtime cannot start: it names an unknown server tool, or its
    approvals do not fit its conversation's pending calls."""


@dataclass(frozen=True, slots=True)
class Target:
    """The provider a spec resolved to, its model name there, and its parsed options."""

    provider: str
    model_name: str
    options: BaseModel


class RunSpec(BaseModel):
    """A run to start: the model, its input, its options. `POST /v1/runs` bodies, Chat
    Completions bodies and batch lines all become one of these.

    Validating one also resolves `model` to a provider and parses `provider_options` for it
    (pydantic errors of type `unknown_provider` / `invalid_provider_options`), so a spec that
    exists can be run: the registry and the run actor never check it again.
    """

    # Strict, as the JSON schema says: no `"3"` for 3, no `0` for false.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, json_schema_extra={"anyOf": MESSAGES_OR_APPROVALS}
    )

    model: str = Field(default="fake/echo", min_length=1, max_length=256)
    messages: list[Message] = Field(max_length=10_000)
    stream_tokens: bool = True
    background: bool = False
    max_steps: JsonInt = Field(default=10, ge=1, le=1000)
    conversation_id: str | None = Field(default=None, min_length=1, max_length=ID_MAX)
    provider_options: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    tools: list[RequestTool] = Field(default_factory=list, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    approvals: list[Approval] = Field(default_factory=list, max_length=128)
    multitask_strategy: MultitaskStrategy = "reject"

    _target: Target | None = PrivateAttr(default=None)

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(to_json(value))
        if size > METADATA_MAX_BYTES:
            raise ValueError(
                f"metadata is {size} bytes as JSON; at most {METADATA_MAX_BYTES} are kept"
            )
        return value

    @model_validator(mode="after")
    def _something_to_do(self) -> RunSpec:
        if not self.messages and not self.approvals:
            raise ValueError("messages: at least one message (or, in a conversation, approvals)")
        return self

    @model_validator(mode="after")
    def _resolve(self) -> RunSpec:
        try:
            provider, model_name = split_model(self.model)
        except UnknownProvider as exc:
            raise PydanticCustomError(UNKNOWN_PROVIDER, str(exc)) from None
        try:
            options = parse_options(provider, self.provider_options)
        except InvalidProviderOptions as exc:
            raise PydanticCustomError(INVALID_PROVIDER_OPTIONS, str(exc)) from None
        self._target = Target(provider, model_name, options)
        return self

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RunSpec:
        """A spec from the fields of a `POST /v1/runs` body (its delivery fields ignored)."""
        return cls.model_validate({k: v for k, v in body.items() if k not in DELIVERY_FIELDS})

    @property
    def target(self) -> Target:
        assert self._target is not None, "a RunSpec is made by validation"
        return self._target

    def only_spec(self) -> RunSpec:
        """This spec without the fields a subclass adds (e.g. an HTTP body's), not re-validated."""
        if type(self) is RunSpec:
            return self
        spec = RunSpec.model_construct(
            **{name: getattr(self, name) for name in RunSpec.model_fields}
        )
        spec._target = self._target
        return spec


def describe(exc: ValidationError) -> str:
    """A validation error as one line: `field: problem; ...` (a whole-spec problem alone)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)
