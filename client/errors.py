"""The client's one exception tree, shaped like httpx's and the openai SDK's.

APIError
├── APIConnectionError          the server could not be reached, or a stream was lost for good
│   └── APITimeoutError
├── APIResponseValidationError  the server answered something this client cannot read
└── APIStatusError              a 4xx or 5xx answer: `status_code`, `detail`, `body`
    ├── BadRequestError (400), AuthenticationError (401), PermissionDeniedError (403),
    ├── NotFoundError (404), ConflictError (409, with `run_id`), RequestTooLargeError (413),
    └── UnprocessableEntityError (422), RateLimitError (429), InternalServerError (5xx)
"""

from __future__ import annotations

from typing import Any

import httpx


class APIError(Exception):
    """Every error this client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIConnectionError(APIError):
    """No answer: connecting failed, or a stream dropped and every resume failed too."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the client's timeout."""


class APIResponseValidationError(APIError):
    """The server's answer does not have the shape the API promises."""


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx; `detail` is its message."""

    def __init__(self, response: httpx.Response, body: Any) -> None:
        self.response = response
        self.status_code = response.status_code
        self.body = body
        detail = body.get("detail") if isinstance(body, dict) else None
        self.detail: str = detail if isinstance(detail, str) else (response.text or "")
        super().__init__(f"{self.status_code}: {self.detail}")


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    """409: the conversation has an active run, named by `run_id`."""

    @property
    def run_id(self) -> str | None:
        value = self.body.get("run_id") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None


class RequestTooLargeError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class InternalServerError(APIStatusError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(response: httpx.Response) -> APIStatusError:
    """The exception for a read error answer (its body must have been read)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    status = response.status_code
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else APIStatusError)
    return cls(response, body)


def transport_error(exc: httpx.TransportError) -> APIConnectionError:
    kind = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return kind(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
