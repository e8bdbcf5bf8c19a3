"""Every error answer, mapped once: what a client sent wrong is a 4xx with a message."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError, RaySystemError
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rayruns.actors.client import UnknownRun
from rayruns.actors.conversation import InvalidContinuation
from rayruns.actors.limits import LiveRunLimit
from rayruns.actors.registry import ConversationBusy
from rayruns.actors.spec import INVALID_PROVIDER_OPTIONS, UNKNOWN_PROVIDER, InvalidRun
from rayruns.serve_app.auth import Unauthorized

log = logging.getLogger(__name__)

SPEC_CHECKS = (UNKNOWN_PROVIDER, INVALID_PROVIDER_OPTIONS)


class ApiError(Exception):
    """An answer other than 2xx, with a message for the client."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status, headers=headers)


def openai_error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error body, for `/v1/chat/completions` (its clients parse this shape)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def busy_message(exc: ConversationBusy) -> str:
    return f"conversation {exc.conversation_id!r} has an active run {exc.run_id}"


def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"}
    if _is_chat(request):
        return openai_error(401, exc.message, "invalid_request_error", "invalid_api_key", headers)
    return error_response(401, exc.message, headers)


def too_many_runs(request: Request, exc: LiveRunLimit) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)}
    message = str(exc)
    if _is_chat(request):
        return openai_error(429, message, "rate_limit_error", "rate_limit_exceeded", headers)
    return error_response(429, message, headers)


def _is_chat(request: Request) -> bool:
    return request.url.path.endswith("/chat/completions")


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return 400, "the body is not valid JSON"
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid")
        # The model and its options are named in the message itself.
        parts.append(msg if err.get("type") in SPEC_CHECKS else f"{loc or 'body'}: {msg}")
    # A model naming no provider is a bad request, not a body that fails its schema.
    status = 400 if any(err.get("type") == UNKNOWN_PROVIDER for err in errors) else 422
    return status, "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, **exc.extra)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        status, message = _validation_message(exc)
        return error_response(status, message, errors=_jsonable(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    async def on_busy(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ConversationBusy)
        return error_response(409, busy_message(exc), run_id=exc.run_id)

    async def on_unauthorized(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Unauthorized)
        return unauthorized(request, exc)

    async def on_limit(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LiveRunLimit)
        return too_many_runs(request, exc)

    async def on_anything_else(_: Request, exc: Exception) -> JSONResponse:
        # The exception's text may hold tracebacks, addresses or paths: it goes to the log.
        log.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return error_response(500, "internal error; the server's log has the details")

    async def on_invalid_run(_: Request, exc: Exception) -> JSONResponse:
        return error_response(422, str(exc))

    async def on_conflicting_run(_: Request, exc: Exception) -> JSONResponse:
        return error_response(409, str(exc))

    async def on_unknown_run(_: Request, exc: Exception) -> JSONResponse:
        return error_response(404, f"no run {exc.args[0]!r}")

    async def on_ray_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("runtime unavailable: %s", exc)
        return error_response(503, "the run registry is unavailable; retry shortly")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(ConversationBusy, on_busy)
    app.add_exception_handler(UnknownRun, on_unknown_run)
    app.add_exception_handler(InvalidRun, on_invalid_run)
    app.add_exception_handler(InvalidContinuation, on_conflicting_run)
    app.add_exception_handler(RayActorError, on_ray_down)
    app.add_exception_handler(RaySystemError, on_ray_down)
    app.add_exception_handler(Unauthorized, on_unauthorized)
    app.add_exception_handler(LiveRunLimit, on_limit)
    app.add_exception_handler(Exception, on_anything_else)


def _allowed_methods(request: Request) -> str:
    """Every method of this path, as the OpenAPI document lists them (Starlette's 405 names
    only the first route that matched the path)."""
    path = request.scope["path"]
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(path):
            return ", ".join(sorted(method.upper() for method in operations))
    return ""


def _jsonable(errors: Any) -> list[dict[str, Any]]:
    # Validation errors may carry the offending input (possibly huge) and exception objects.
    return [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in errors
    ]


class BodyLimit:
    """413 for a body over `limit` bytes, by Content-Length or by counting a chunked body.

    The body is read here, before the app sees it, so an oversized one never reaches parsing.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"the body is larger than {self.limit} bytes")
        await response(scope, receive, send)
