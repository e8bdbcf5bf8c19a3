"""The provider error tree, and the `error_type` each error maps to.

    ProviderError                   llm_error
     ├── ProviderTimeout            llm_timeout
     ├── ProviderRateLimited        llm_rate_limit
     ├── ProviderAuthentication     llm_authentication
     ├── ProviderBadRequest         llm_bad_request
     └── StreamIncomplete           stream_incomplete

Every error carries a human message and an `ErrorDetail` (the vendor's status, message and
request id), never a key or a header. The classes pickle by their constructor arguments, so they
cross Ray intact.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

ErrorType = Literal[
    "llm_timeout",
    "llm_rate_limit",
    "llm_authentication",
    "llm_bad_request",
    "llm_error",
    "internal_error",
    "stream_incomplete",
    "run_lost",
    "invalid_request",
    "run_timeout",
    "run_output_limit",
]


class ErrorDetail(BaseModel):
    """What the vendor said about a failure. Messages are scrubbed of the key before they get here;
    there is deliberately no field for headers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: int | None = None  # the HTTP status, or what an in-stream error stands for
    vendor_message: str | None = None
    request_id: str | None = None  # the vendor's id of the request, for its support


class ProviderError(Exception):
    """A provider call failed; `error_type` says how."""

    error_type: ClassVar[ErrorType] = "llm_error"

    def __init__(self, message: str, detail: ErrorDetail | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or ErrorDetail()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.detail))


class ProviderTimeout(ProviderError):
    """The provider did not answer in time."""

    error_type = "llm_timeout"


class ProviderRateLimited(ProviderError):
    """The provider refused the call for rate or quota (HTTP 429)."""

    error_type = "llm_rate_limit"


class ProviderAuthentication(ProviderError):
    """Missing or rejected credentials (HTTP 401/403, or no key configured)."""

    error_type = "llm_authentication"


class ProviderBadRequest(ProviderError):
    """The provider rejected the request itself (other HTTP 4xx)."""

    error_type = "llm_bad_request"


class StreamIncomplete(ProviderError):
    """The stream ended without the provider's end-of-message marker."""

    error_type = "stream_incomplete"


class UnknownProvider(ValueError):
    """A model string names a provider that does not exist."""


class InvalidProviderOptions(ValueError):
    """`provider_options` do not fit the provider."""
