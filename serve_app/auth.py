"""Who is calling: API keys (`Authorization: Bearer`, or the session cookie) and their tenant.

While no key exists the server is open and callers have no tenant (they see every run);
`rayruns serve` refuses a non-loopback host in that state. Once a key exists, every route but
`/healthz` and `/v1/session` needs an active one. Keys are checked by the registry (it holds the
key table, beside the runs); only a key's hash leaves this process, and answers are cached for
`RAYRUNS_AUTH_CACHE_S`, which bounds how long a revoked key keeps working.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from rayruns.actors.client import RegistryClient
from rayruns.actors.keys import AuthCheck, hash_key

SESSION_COOKIE = "rayruns_session"
_CACHE_MAX = 10_000


class Unauthorized(Exception):
    """No valid key: answered 401 with `WWW-Authenticate: Bearer`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Caller:
    """The tenant a request acts for; None on an open server (no keys exist)."""

    tenant: str | None


class KeyChecker:
    """Asks the registry about presented keys; remembers good answers for `cache_s`."""

    def __init__(self, client: RegistryClient, cache_s: float) -> None:
        self._client = client
        self._cache_s = cache_s
        self._cache: dict[str | None, tuple[float, AuthCheck]] = {}

    async def check(self, key: str | None) -> AuthCheck:
        key_hash = None if key is None else hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = await self._client.authenticate(key_hash)
        # Wrong keys are not remembered: a caller trying many cannot fill the cache.
        if self._cache_s > 0 and (key_hash is None or answer.tenant is not None):
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[key_hash] = (now + self._cache_s, answer)
        return answer

    async def caller(self, key: str | None) -> Caller:
        """The caller's tenant; raises Unauthorized when keys are required and this is none."""
        answer = await self.check(key)
        if not answer.keys_required:
            return Caller(tenant=None)
        if answer.tenant is None:
            raise Unauthorized(
                "a valid API key is required: send `Authorization: Bearer <key>`"
                if key is None
                else "the API key is not valid (unknown or revoked)"
            )
        return Caller(tenant=answer.tenant)


# Parsed here, but declared through FastAPI's security classes so that the OpenAPI schema
# describes both ways in.
BEARER = HTTPBearer(auto_error=False, description="an API key from `rayruns keys add`")
_COOKIE = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="set by `POST /v1/session`"
)


def key_checker(request: Request) -> KeyChecker:
    checker: KeyChecker = request.app.state.keys
    return checker


async def authenticate(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    cookie: Annotated[str | None, Depends(_COOKIE)],
) -> Caller:
    """The dependency every guarded route takes: the bearer key, else the session cookie.

    An `Authorization` header that is not a bearer token counts as a wrong key (never ignored in
    favour of the cookie).
    """
    key = bearer.credentials if bearer is not None else None
    if key is None:
        key = request.headers.get("authorization") or cookie or None
    return await key_checker(request).caller(key)


CallerDep = Annotated[Caller, Depends(authenticate)]
