"""An HTTP client for a rayruns server: `Client` and `AsyncClient`.

Imports neither Ray nor the server: only httpx, httpx-sse and the frame models.
"""

from rayruns.actors.frames import (
    ApprovalRequestMessage,
    AssistantMessage,
    ErrorFrame,
    Frame,
    ReasoningMessage,
    StopReasonFrame,
    ToolCallMessage,
    ToolReturnMessage,
    UsageFrame,
)
from rayruns.actors.records import Run, RunError, Usage
from rayruns.client.async_client import AsyncClient, AsyncRuns, AsyncRunStream
from rayruns.client.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
)
from rayruns.client.sync_client import Client, Runs, RunStream
from rayruns.client.wire import FinishedRun, RetryPolicy

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "ApprovalRequestMessage",
    "AssistantMessage",
    "AsyncClient",
    "AsyncRunStream",
    "AsyncRuns",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "ErrorFrame",
    "FinishedRun",
    "Frame",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ReasoningMessage",
    "RequestTooLargeError",
    "RetryPolicy",
    "Run",
    "RunError",
    "RunStream",
    "Runs",
    "StopReasonFrame",
    "ToolCallMessage",
    "ToolReturnMessage",
    "UnprocessableEntityError",
    "Usage",
    "UsageFrame",
]
