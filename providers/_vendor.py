"""What the three vendor providers share: keys, options with extras, error classification, clients.

Each provider maps its SDK's exceptions in one context manager of its own; the HTTP status and
transport classification they all end in lives here, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import ConfigDict, SecretStr, model_validator

from rayruns.providers.base import CommonOptions
from rayruns.providers.errors import (
    ProviderAuthentication,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    StreamIncomplete,
)

C = TypeVar("C")

log = logging.getLogger(__name__)


class VendorOptions(CommonOptions):
    """The common options plus the vendor's own, passed through as they are (`model_extra`).

    `reserved` names keys the provider sets itself, or that a common option already maps to.
    """

    model_config = ConfigDict(extra="allow")

    reserved: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _no_reserved_extras(self) -> VendorOptions:
        clash = sorted(set(self.model_extra or {}) & self.reserved)
        if clash:
            raise ValueError(f"set by the provider or by a common option: {', '.join(clash)}")
        return self

    @property
    def extras(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


def require_key(secret: SecretStr | None, vendor: str, variables: str) -> str:
    """The configured API key; without one, fail before any connection is made."""
    key = secret.get_secret_value() if secret is not None else ""
    if not key:
        raise ProviderAuthentication(
            f"no API key for {vendor}: set {variables}",
            {"status": None, "vendor_message": None},
        )
    return key


def _scrub(text: str | None, secret: str) -> str | None:
    # Some vendors echo the rejected key in their message; it must not travel further.
    if text is None or not secret:
        return text
    return text.replace(secret, "***")


def status_error(
    vendor: str, status: int, vendor_message: str | None, secret: str
) -> ProviderError:
    """The error an HTTP status from `vendor` maps to."""
    cls: type[ProviderError]
    if status in (408, 504):
        cls, what = ProviderTimeout, "timed out"
    elif status == 429:
        cls, what = ProviderRateLimited, "rate limited the call"
    elif status in (401, 403):
        cls, what = ProviderAuthentication, "rejected the credentials"
    elif 400 <= status < 500:
        cls, what = ProviderBadRequest, "rejected the request"
    else:
        cls, what = ProviderError, "failed"
    message = _scrub(vendor_message, secret)
    summary = f"{vendor} {what} (HTTP {status})" + (f": {message}" if message else "")
    return cls(summary, {"status": status, "vendor_message": message})


def stream_error(vendor: str, vendor_message: str | None, secret: str) -> ProviderError:
    """An error without an HTTP status: the vendor reported it inside a 200 stream."""
    message = _scrub(vendor_message, secret)
    summary = f"{vendor} stream failed" + (f": {message}" if message else "")
    return ProviderError(summary, {"status": None, "vendor_message": message})


def _is_timeout(exc: BaseException) -> bool:
    # Only a library already imported can have raised; importing one here would cost for nothing.
    kinds = [getattr(sys.modules.get(m), "TimeoutException", None) for m in ("httpx", "httpx2")]
    return isinstance(exc, TimeoutError) or any(k is not None and isinstance(exc, k) for k in kinds)


def _is_transport(exc: BaseException) -> bool:
    kinds = [getattr(sys.modules.get(m), "RequestError", None) for m in ("httpx", "httpx2")]
    return isinstance(exc, OSError) or any(k is not None and isinstance(exc, k) for k in kinds)


def connection_error(
    vendor: str, exc: BaseException, secret: str, *, timed_out: bool = False
) -> ProviderError:
    """A request or stream that broke below HTTP: a timeout, or a connection lost or refused."""
    cause = exc.__cause__ or exc
    message = _scrub(str(cause) or type(cause).__name__, secret)
    detail = {"status": None, "vendor_message": message}
    if timed_out or _is_timeout(exc) or _is_timeout(cause):
        return ProviderTimeout(f"{vendor} did not answer in time: {message}", detail)
    return ProviderError(f"{vendor} connection failed: {message}", detail)


def wire_error(vendor: str, exc: Exception, secret: str) -> ProviderError | None:
    """Map what the transport or the SSE decoding raised unwrapped; None for anything else."""
    if _is_timeout(exc) or _is_transport(exc):
        return connection_error(vendor, exc, secret)
    if isinstance(exc, json.JSONDecodeError):
        message = _scrub(str(exc), secret)
        detail = {"status": None, "vendor_message": message}
        return ProviderError(f"{vendor} sent a malformed stream: {message}", detail)
    return None


def incomplete(vendor: str, marker: str) -> StreamIncomplete:
    return StreamIncomplete(
        f"{vendor} stream ended without {marker}", {"status": None, "vendor_message": None}
    )


async def close_quietly(close: Callable[[], Awaitable[None]]) -> None:
    """Close a response in a `finally` without letting a failure to close replace the error."""
    try:
        await close()
    except Exception:
        log.warning("closing a provider response failed", exc_info=True)


class LoopClient(Generic[C]):
    """One SDK client per event loop: a client's connection pool belongs to the loop it ran on."""

    def __init__(self, build: Callable[[], C], close: Callable[[C], Awaitable[None]]) -> None:
        self._build, self._close = build, close
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._client: C | None = None

    def get(self) -> C:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is None or self._loop() is not loop:
            self._client, self._loop = self._build(), weakref.ref(loop)
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if (
            client is not None
            and self._loop is not None
            and self._loop() is asyncio.get_running_loop()
        ):
            await self._close(client)


class BlockCounter:
    """Numbers the blocks of a stream whose vendor has none: a new block when the kind changes."""

    def __init__(self) -> None:
        self._kind: str | None = None
        self._block = -1

    def block(self, kind: str) -> int:
        if kind != self._kind:
            self._kind, self._block = kind, self._block + 1
        return self._block
