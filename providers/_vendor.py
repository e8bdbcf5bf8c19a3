"""The base of the three vendor providers: what every SDK-backed provider does the same way.

A vendor module only translates its wire format: it builds the request (`open`), reads the
stream's chunks (`reader`), and classifies its SDK's exceptions in one table (`error_table`,
`error_detail`). Here, once: the SDK client kept across runs and closed by `aclose`, the key check
(a provider without a key fails before any connection), the stream loop with its guard, closing
the vendor stream however the loop ends, and the HTTP status and transport classification.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, SecretStr

from rayruns.providers.base import (
    Provider,
    ProviderCall,
    ProviderEvent,
    RunCancelled,
    StreamGuard,
)
from rayruns.providers.errors import (
    ErrorDetail,
    ProviderAuthentication,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderTimeout,
    StreamIncomplete,
)
from rayruns.providers.options import VendorOptions
from rayruns.providers.settings import ProviderSettings

C = TypeVar("C")
K = TypeVar("K")
K_co = TypeVar("K_co", covariant=True)

log = logging.getLogger(__name__)

# How an SDK exception is read: a timeout or a broken connection below HTTP, or an error the
# vendor reported (an HTTP status, or an error event inside a 200 stream).
FailureKind = Literal["timeout", "connection", "vendor"]
ErrorTable = tuple[tuple[type[BaseException], FailureKind], ...]


class ClosableStream(AsyncIterable[K_co], Protocol[K_co]):
    """An SDK's stream object: its chunks, and `close` for its response."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Opened(Generic[K]):
    """A vendor stream once its request is made: its chunks, and how to close it."""

    chunks: AsyncIterable[K]
    close: Callable[[], Awaitable[None]]


class StreamReader(ABC, Generic[K]):
    """Turns one vendor's chunks into events and keeps `call.usage` current as they arrive."""

    end_marker: ClassVar[str]  # what the vendor sends last, for the error when it never came

    def __init__(self, call: ProviderCall) -> None:
        self.usage = call.usage
        self.step = call.step
        self.finished = False

    @abstractmethod
    def feed(self, chunk: K) -> list[ProviderEvent]: ...

    def end(self, vendor: str) -> None:
        """Called when the chunks ran out: raises if the stream did not end as it should."""
        if not self.finished:
            raise StreamIncomplete(f"{vendor} stream ended without {self.end_marker}")


class VendorProvider(Provider, Generic[C, K]):
    """A provider that streams through a vendor SDK's client `C`, whose stream yields `K`."""

    options_model: ClassVar[type[VendorOptions]] = VendorOptions
    reader_class: ClassVar[type[StreamReader[Any]]]

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._clients: LoopClient[C] = LoopClient(
            lambda: self.build_client(self._key()), self.close_client
        )

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> BaseModel:
        return cls.options_model.model_validate(cls.options_model.admit(options))

    # -- what each vendor translates --------------------------------------------------------

    @abstractmethod
    def build_client(self, key: str) -> C:
        """The SDK client; the SDK is imported here, on first use."""

    @abstractmethod
    async def close_client(self, client: C) -> None: ...

    @abstractmethod
    async def open(self, client: C, call: ProviderCall, options: Any) -> Opened[K]:
        """Make the request for `call` (options are `options_model`) and return its stream."""

    @abstractmethod
    def error_table(self) -> ErrorTable:
        """The SDK's exception types, most specific first, and how each is read."""

    @abstractmethod
    def error_detail(self, exc: BaseException) -> ErrorDetail:
        """Status, message and request id of an error the vendor reported (a `vendor` row)."""

    # -- the same for every vendor ----------------------------------------------------------

    def request_timeout(self, options: VendorOptions) -> float | None:
        """The client's `timeout` option, never above the server's; None to keep the server's."""
        if options.timeout is None:
            return None
        return min(options.timeout, self.settings.provider_timeout_s)

    async def aclose(self) -> None:
        """Close the cached client and its idle connections."""
        await self._clients.aclose()

    async def stream(self, call: ProviderCall) -> AsyncGenerator[ProviderEvent, None]:
        options = call.options
        assert isinstance(options, self.options_model)
        with StreamGuard(call):
            opened: Opened[K] | None = None
            try:
                key = self._key()
                client = self._clients.get()
                with self._mapped_errors(key):
                    opened = await self.open(client, call, options)
                    reader = self.reader_class(call)
                    async for chunk in opened.chunks:
                        for event in reader.feed(chunk):
                            yield event
                    reader.end(self.name)
            finally:
                # However the loop ended (a cancel thrown in at a yield, a cancel of an await,
                # an error, the consumer closing us), the vendor's connection goes now.
                if opened is not None:
                    await close_quietly(opened.close)
                call.ending.upstream_closed = True

    def _key(self) -> str:
        """The configured API key (`<name>_api_key`); without one, fail before any connection."""
        setting = f"{self.name}_api_key"
        secret: SecretStr | None = getattr(self.settings, setting)
        key = secret.get_secret_value() if secret is not None else ""
        if not key:
            where = _variables(ProviderSettings.model_fields[setting].validation_alias)
            raise ProviderAuthentication(f"no API key for {self.name}: set {where}")
        return key

    @contextmanager
    def _mapped_errors(self, key: str) -> Iterator[None]:
        """Every SDK or transport failure, of the request or of the stream, as a ProviderError."""
        try:
            yield
        except (RunCancelled, ProviderError):
            raise
        except Exception as exc:
            mapped = self._mapped(exc, key)
            if mapped is None:
                raise
            raise mapped from exc

    def _mapped(self, exc: Exception, key: str) -> ProviderError | None:
        kind = next((kind for cls, kind in self.error_table() if isinstance(exc, cls)), None)
        if kind == "timeout":
            return connection_error(self.name, exc, key, timed_out=True)
        if kind == "connection":
            return connection_error(self.name, exc, key)
        if kind == "vendor":
            detail = self.error_detail(exc)
            detail = detail.model_copy(
                update={"vendor_message": _scrub(detail.vendor_message, key)}
            )
            if detail.status is not None:
                return status_error(self.name, detail)
            return stream_error(self.name, detail)
        return wire_error(self.name, exc, key)


class StainlessProvider(VendorProvider[C, K]):
    """A vendor whose SDK is generated by Stainless (openai, anthropic): the same client
    constructor, the same per-request options, the same exception tree."""

    def build_client(self, key: str) -> C:
        sdk = importlib.import_module(self.name)
        s = self.settings
        # Every Stainless SDK exports its async client as `AsyncClient`.
        client = sdk.AsyncClient(
            api_key=key,
            base_url=getattr(s, f"{self.name}_base_url"),
            timeout=sdk.Timeout(s.provider_timeout_s, connect=s.provider_connect_timeout_s),
            max_retries=s.provider_max_retries,
        )
        return cast(C, client)

    async def close_client(self, client: C) -> None:
        await cast(Any, client).close()

    @abstractmethod
    async def create(self, client: C, call: ProviderCall, options: Any) -> ClosableStream[K]:
        """Send the request for `call` with the SDK's `stream=True`."""

    async def open(self, client: C, call: ProviderCall, options: Any) -> Opened[K]:
        response = await self.create(client, call, options)
        return Opened(response, response.close)

    def error_detail(self, exc: BaseException) -> ErrorDetail:
        sdk = importlib.import_module(self.name)
        if not isinstance(exc, sdk.APIStatusError):
            return ErrorDetail(vendor_message=self.vendor_message(exc))
        return ErrorDetail(
            status=self.vendor_status(exc),
            vendor_message=self.vendor_message(exc),
            request_id=exc.request_id,
        )

    def vendor_message(self, exc: Any) -> str | None:
        """The vendor's own words in an `APIError`."""
        return str(exc.message)

    def vendor_status(self, exc: Any) -> int | None:
        """The status an `APIStatusError` stands for."""
        return int(exc.status_code)

    def sdk_timeout(self, options: VendorOptions) -> Any:
        """The `timeout` of one request: a client's lower one, or the client's own (NOT_GIVEN)."""
        sdk = importlib.import_module(self.name)
        limit = self.request_timeout(options)
        if limit is None:
            return sdk.NOT_GIVEN
        return sdk.Timeout(limit, connect=min(self.settings.provider_connect_timeout_s, limit))

    def error_table(self) -> ErrorTable:
        sdk = importlib.import_module(self.name)
        return (
            (sdk.APITimeoutError, "timeout"),
            (sdk.APIConnectionError, "connection"),
            (sdk.APIError, "vendor"),  # a status, or an error event inside a 200 stream
        )


def system_text(call: ProviderCall) -> str | None:
    """The system messages as one text, for vendors that take it apart from the messages."""
    return "\n\n".join(m.content for m in call.messages if m.role == "system") or None


def _variables(alias: Any) -> str:
    """`A, B or C`: the environment variables a setting is read from."""
    names = [str(name) for name in getattr(alias, "choices", [alias])]
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _scrub(text: str | None, secret: str) -> str | None:
    # Some vendors echo the rejected key in their message; it must not travel further.
    if text is None or not secret:
        return text
    return text.replace(secret, "***")


def status_error(vendor: str, detail: ErrorDetail) -> ProviderError:
    """The error an HTTP status from `vendor` maps to (the table every vendor shares)."""
    status = detail.status or 0
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
    message = detail.vendor_message
    return cls(f"{vendor} {what} (HTTP {status})" + (f": {message}" if message else ""), detail)


def stream_error(vendor: str, detail: ErrorDetail) -> ProviderError:
    """An error without an HTTP status: the vendor reported it inside a 200 stream."""
    message = detail.vendor_message
    return ProviderError(f"{vendor} stream failed" + (f": {message}" if message else ""), detail)


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
    detail = ErrorDetail(vendor_message=message)
    if timed_out or _is_timeout(exc) or _is_timeout(cause):
        return ProviderTimeout(f"{vendor} did not answer in time: {message}", detail)
    return ProviderError(f"{vendor} connection failed: {message}", detail)


def wire_error(vendor: str, exc: Exception, secret: str) -> ProviderError | None:
    """Map what the transport or the SSE decoding raised unwrapped; None for anything else."""
    if _is_timeout(exc) or _is_transport(exc):
        return connection_error(vendor, exc, secret)
    if isinstance(exc, json.JSONDecodeError):
        message = _scrub(str(exc), secret)
        detail = ErrorDetail(vendor_message=message)
        return ProviderError(f"{vendor} sent a malformed stream: {message}", detail)
    return None


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
