"""`AsyncClient`: the asyncio HTTP client, its `runs` resource, and `AsyncRunStream`."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Unpack, overload

import httpx
from httpx_sse import EventSource

from rayruns.actors.frames import Frame
from rayruns.actors.records import Run, RunStatus
from rayruns.client.errors import (
    APIConnectionError,
    APIStatusError,
    status_error,
    transport_error,
)
from rayruns.client.wire import (
    DEFAULT_TIMEOUT,
    FINISHED,
    RETRY_STATUSES,
    RUN,
    RUN_LIST,
    STREAM_HEADERS,
    CreateOptions,
    Cursor,
    Done,
    FinishedRun,
    RetryPolicy,
    check_stream,
    create_body,
    gave_up,
    headers,
    list_params,
    parse,
    run_id_of,
    run_path,
    stream_params,
)


class AsyncClient:
    """`Client`, for asyncio: the same resources, each call awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 5,
    ) -> None:
        self.retry = RetryPolicy(max_retries=max_retries)
        self.http = httpx.AsyncClient(base_url=base_url, headers=headers(api_key), timeout=timeout)
        self.runs = AsyncRuns(self)

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request whose whole answer is read; a 4xx/5xx raises."""
        try:
            response = await self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        if response.is_error:
            raise status_error(response)
        return response

    async def open_stream(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """An SSE answer, its body still to read; a 4xx/5xx raises, transport errors pass up."""
        request = self.http.build_request(method, path, headers=STREAM_HEADERS, **kw)
        response = await self.http.send(request, stream=True)
        if response.is_error:
            await response.aread()
            await response.aclose()
            raise status_error(response)
        check_stream(response)
        return response

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncRuns:
    """`client.runs`: create, get, list, cancel and stream runs."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @overload
    async def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        stream: Literal[True] = True,
        **options: Unpack[CreateOptions],
    ) -> AsyncRunStream: ...

    @overload
    async def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        stream: Literal[False],
        **options: Unpack[CreateOptions],
    ) -> FinishedRun: ...

    async def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        stream: bool = True,
        **options: Unpack[CreateOptions],
    ) -> AsyncRunStream | FinishedRun:
        """Start a run. Streamed: its frames as they come; else the run once it has ended."""
        body = create_body(messages, stream, options)
        if not stream:
            return parse(FINISHED, await self._client.request("POST", "/v1/runs", json=body))
        try:
            response = await self._client.open_stream("POST", "/v1/runs", json=body)
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return AsyncRunStream(self._client, run_id_of(response), response, 0, options)

    async def stream(
        self, run_id: str, *, starting_after: int = 0, include_pings: bool | None = None
    ) -> AsyncRunStream:
        """Follow a run from just after `starting_after`: logged frames, then live ones."""
        opts: CreateOptions = {} if include_pings is None else {"include_pings": include_pings}
        stream = AsyncRunStream(self._client, run_id, None, starting_after, opts)
        try:
            await stream.open()
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return stream

    async def get(self, run_id: str) -> Run:
        return parse(RUN, await self._client.request("GET", run_path(run_id)))

    async def list(
        self,
        *,
        conversation_id: str | None = None,
        status: RunStatus | None = None,
        limit: int | None = None,
    ) -> builtins.list[Run]:
        """Runs, newest first."""
        params = list_params(conversation_id, status, limit)
        return parse(RUN_LIST, await self._client.request("GET", "/v1/runs", params=params))

    async def cancel(self, run_id: str) -> Run:
        """Cancel a run; returns its record once terminal (unchanged if it already was)."""
        return parse(RUN, await self._client.request("POST", run_path(run_id, "/cancel")))


class AsyncRunStream:
    """`RunStream`, for asyncio: `async for frame in stream`, resumed the same way."""

    def __init__(
        self,
        client: AsyncClient,
        run_id: str,
        response: httpx.Response | None,
        starting_after: int,
        options: CreateOptions,
    ) -> None:
        self.run_id = run_id
        self.reconnects = 0
        self._client = client
        self._response = response
        self._cursor = Cursor(starting_after)
        self._include_pings = options.get("include_pings")
        self._frames = self._iterate()

    @property
    def last_seq_id(self) -> int:
        return self._cursor.last_seq_id

    async def open(self) -> None:
        path = run_path(self.run_id, "/stream")
        params = stream_params(self._cursor.last_seq_id, self._include_pings)
        self._response = await self._client.open_stream("GET", path, params=params)

    async def _iterate(self) -> AsyncGenerator[Frame, None]:
        failures = 0
        while True:
            try:
                if self._response is None:
                    await self.open()
                assert self._response is not None
                async for event in EventSource(self._response).aiter_sse():
                    item = self._cursor.take(event)
                    if isinstance(item, Done):
                        return
                    if item is not None:
                        failures = 0
                        yield item
                lost = "the stream ended before [DONE]"
            except httpx.TransportError as exc:
                lost = f"{type(exc).__name__}: {exc}"
            except APIStatusError as exc:
                if exc.status_code not in RETRY_STATUSES:
                    raise
                lost = str(exc)
            finally:
                if self._response is not None:
                    await self._response.aclose()
                    self._response = None
            failures += 1
            retry = self._client.retry
            if failures > retry.max_retries:
                raise APIConnectionError(gave_up(self.run_id, retry.max_retries, lost))
            await asyncio.sleep(retry.delay_s(failures))
            self.reconnects += 1

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self

    async def __anext__(self) -> Frame:
        return await anext(self._frames)

    async def aclose(self) -> None:
        """Stop reading (closes the connection; a foreground run's server then cancels it)."""
        await self._frames.aclose()
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> AsyncRunStream:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
