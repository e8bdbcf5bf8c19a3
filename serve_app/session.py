"""`POST /v1/session` / `DELETE /v1/session`: an API key as an HttpOnly cookie, for browsers.

`EventSource` cannot send an `Authorization` header, so a page trades its key for a cookie the
auth dependency also accepts. The cookie is HttpOnly (page scripts cannot read it back) and
SameSite=Strict (other sites cannot make the browser send it); Secure when the request came over
HTTPS. It holds the key itself, so revoking the key ends every session made with it. On a server
without keys there is nothing to remember: 200 `{"tenant": null}` and no cookie.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from rayruns.serve_app.auth import BEARER, SESSION_COOKIE, Unauthorized, key_checker
from rayruns.serve_app.openapi import answers

router = APIRouter(prefix="/v1")


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str | None = Field(default=None, min_length=1, max_length=512)


@router.post("/session", response_model=None, responses=answers(400, 401, 413, 422))
async def open_session(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    body: SessionRequest | None = None,
) -> JSONResponse:
    key = body.api_key if body is not None else None
    if key is None and bearer is not None:
        key = bearer.credentials
    if key is None:
        raise Unauthorized('send the API key as {"api_key": ...} or `Authorization: Bearer`')
    answer = await key_checker(request).check(key)
    if not answer.keys_required:  # an open server: nothing to remember
        return JSONResponse({"tenant": None})
    if answer.tenant is None:
        raise Unauthorized("the API key is not valid (unknown or revoked)")
    response = JSONResponse({"tenant": answer.tenant})
    response.set_cookie(
        SESSION_COOKIE,
        key,
        httponly=True,
        samesite="strict",
        secure=_https(request),
        path="/",
    )
    return response


@router.delete("/session", response_model=None, responses=answers())
async def close_session(request: Request) -> JSONResponse:
    response = JSONResponse({"tenant": None})
    response.delete_cookie(
        SESSION_COOKIE, httponly=True, samesite="strict", secure=_https(request), path="/"
    )
    return response


def _https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"
