"""`Client`: the blocking HTTP client, its `runs` resource, and `RunStream`."""

from __future__ import annotations

import builtins
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
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


class Client:
    """A rayruns server at `base_url`; `api_key` is sent as `Authorization: Bearer <key>`.

    `max_retries` bounds the resumes of a dropped stream (the count restarts after each frame).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 5,
    ) -> None:
        self.retry = RetryPolicy(max_retries=max_retries)
        self.http = httpx.Client(base_url=base_url, headers=headers(api_key), timeout=timeout)
        self.runs = Runs(self)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request whose whole answer is read; a 4xx/5xx raises."""
        try:
            response = self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        if response.is_error:
            raise status_error(response)
        return response

    def open_stream(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """An SSE answer, its body still to read; a 4xx/5xx raises, transport errors pass up."""
        request = self.http.build_request(method, path, headers=STREAM_HEADERS, **kw)
        response = self.http.send(request, stream=True)
        if response.is_error:
            response.read()
            response.close()
            raise status_error(response)
        check_stream(response)
        return response

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Runs:
    """`client.runs`: create, get, list, cancel and stream runs."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @overload
    def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        stream: Literal[True] = True,
        **options: Unpack[CreateOptions],
    ) -> RunStream: ...

    @overload
    def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        stream: Literal[False],
        **options: Unpack[CreateOptions],
    ) -> FinishedRun: ...

    def create(
        self,
        *,
        messages: Sequence[Mapping[str, Any]],
        stream: bool = True,
        **options: Unpack[CreateOptions],
    ) -> RunStream | FinishedRun:
        """Start a run. Streamed: its frames as they come; else the run once it has ended."""
        body = create_body(messages, stream, options)
        if not stream:
            return parse(FINISHED, self._client.request("POST", "/v1/runs", json=body))
        try:
            response = self._client.open_stream("POST", "/v1/runs", json=body)
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return RunStream(self._client, run_id_of(response), response, 0, options)

    def stream(
        self, run_id: str, *, starting_after: int = 0, include_pings: bool | None = None
    ) -> RunStream:
        """Follow a run from just after `starting_after`: logged frames, then live ones."""
        opts: CreateOptions = {} if include_pings is None else {"include_pings": include_pings}
        stream = RunStream(self._client, run_id, None, starting_after, opts)
        try:
            stream.open()
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        return stream

    def get(self, run_id: str) -> Run:
        return parse(RUN, self._client.request("GET", run_path(run_id)))

    def list(
        self,
        *,
        conversation_id: str | None = None,
        status: RunStatus | None = None,
        limit: int | None = None,
    ) -> builtins.list[Run]:
        """Runs, newest first."""
        params = list_params(conversation_id, status, limit)
        return parse(RUN_LIST, self._client.request("GET", "/v1/runs", params=params))

    def cancel(self, run_id: str) -> Run:
        """Cancel a run; returns its record once terminal (unchanged if it already was)."""
        return parse(RUN, self._client.request("POST", run_path(run_id, "/cancel")))


class RunStream:
    """A run's frames, each once, in `seq_id` order, through to its terminal frames.

    A connection that drops before `[DONE]` is reopened from the last `seq_id` seen, up to the
    client's `max_retries` times in a row with backoff. A foreground run whose connection drops is
    cancelled by the server, so its resumed stream ends `cancelled`; a background one goes on.
    """

    def __init__(
        self,
        client: Client,
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

    def open(self) -> None:
        path = run_path(self.run_id, "/stream")
        params = stream_params(self._cursor.last_seq_id, self._include_pings)
        self._response = self._client.open_stream("GET", path, params=params)

    def _iterate(self) -> Generator[Frame, None, None]:
        failures = 0
        while True:
            try:
                if self._response is None:
                    self.open()
                assert self._response is not None
                for event in EventSource(self._response).iter_sse():
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
                    self._response.close()
                    self._response = None
            failures += 1
            retry = self._client.retry
            if failures > retry.max_retries:
                raise APIConnectionError(gave_up(self.run_id, retry.max_retries, lost))
            time.sleep(retry.delay_s(failures))
            self.reconnects += 1

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        """Stop reading (closes the connection; a foreground run's server then cancels it)."""
        self._frames.close()
        if self._response is not None:
            self._response.close()

    def __enter__(self) -> RunStream:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
