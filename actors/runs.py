"""The Python API for scripts: start runs, follow their frames, cancel them, await results.

runs = Runs.connect()                       # joins Ray (or starts a local one)
handle = await runs.start({"messages": [{"role": "user", "content": "hi"}]})
async for frame in handle.frames():
    ...
result = await handle.result()              # RunResult: status, text, usage, error, timings
results = await runs.run_batch(requests, concurrency=32)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import ray
from pydantic import BaseModel, ValidationError

from rayruns.actors.client import connect_registry, find_run, follow, start_run
from rayruns.actors.frames import Frame, LoggedFrame, parse_frame
from rayruns.actors.records import Run, RunError, RunRequest, RunStatus, Usage
from rayruns.actors.remote import ActorHandle
from rayruns.actors.settings import ActorSettings
from rayruns.providers.errors import InvalidProviderOptions, UnknownProvider
from rayruns.providers.settings import ProviderSettings


class RunResult(BaseModel):
    """One finished run, as a batch writes it out."""

    id: str | int | None = None
    status: RunStatus | None
    stop_reason: str | None
    text: str
    usage: Usage | None
    error: RunError | None
    run_id: str | None
    ttft_ms: float | None
    duration_ms: float | None


class RunHandle:
    """A started run."""

    def __init__(self, registry: ActorHandle, run: Run, actor: ActorHandle | None) -> None:
        self._registry = registry
        self._actor = actor
        self.run = run
        self._started = time.perf_counter()

    @property
    def run_id(self) -> str:
        return self.run.id

    async def batches(self, after_seq: int = 0) -> AsyncIterator[list[LoggedFrame]]:
        async for batch in follow(self._registry, self.run_id, after_seq, self._actor):
            yield batch

    async def frames(self, after_seq: int = 0) -> AsyncIterator[Frame]:
        """Every frame after `after_seq`, typed, through the terminal frames."""
        async for batch in self.batches(after_seq):
            for logged in batch:
                yield parse_frame(logged)

    async def cancel(self) -> Run:
        run: Run = await self._registry.cancel.remote(self.run_id)
        self.run = run
        return run

    async def wait(self) -> Run:
        run: Run = await self._registry.wait_terminal.remote(self.run_id)
        self.run = run
        return run

    async def result(self, id: str | int | None = None) -> RunResult:
        """Follow the run to its end; the assistant text, usage, error and timings."""
        text: list[str] = []
        ttft: float | None = None
        async for batch in self.batches():
            for logged in batch:
                if logged.message_type == "assistant_message":
                    if ttft is None:
                        ttft = time.perf_counter()
                    text.append(json.loads(logged.data)["content"])
        run = await self.wait()
        end = time.perf_counter()
        return RunResult(
            id=id,
            status=run.status,
            stop_reason=run.stop_reason,
            text="".join(text),
            usage=run.usage,
            error=run.error,
            run_id=run.id,
            ttft_ms=None if ttft is None else (ttft - self._started) * 1000,
            duration_ms=(end - self._started) * 1000,
        )


def invalid_result(id: str | int | None, message: str) -> RunResult:
    """A request that could not start: recorded as a failed result, never raised."""
    return RunResult(
        id=id,
        status="failed",
        stop_reason="error",
        text="",
        usage=None,
        error=RunError(error_type="invalid_request", message=message),
        run_id=None,
        ttft_ms=None,
        duration_ms=None,
    )


class Runs:
    """The entry point: one registry, many runs."""

    def __init__(self, registry: ActorHandle) -> None:
        self.registry = registry

    @classmethod
    def connect(
        cls,
        address: str | None = None,
        settings: ActorSettings | None = None,
        provider_settings: ProviderSettings | None = None,
    ) -> Runs:
        """Join the Ray cluster at `address` (or start a local Ray) and its rayruns registry."""
        settings = settings or ActorSettings()
        if not ray.is_initialized():
            ray.init(address=address, namespace=settings.namespace, include_dashboard=False)
        return cls(connect_registry(settings, provider_settings or ProviderSettings()))

    async def start(self, request: RunRequest | dict[str, Any]) -> RunHandle:
        """Start a run; raises pydantic's ValidationError, UnknownProvider or ConversationBusy."""
        body = request if isinstance(request, RunRequest) else RunRequest.model_validate(request)
        run, actor = await start_run(self.registry, body)
        return RunHandle(self.registry, run, actor)

    async def attach(self, run_id: str) -> RunHandle:
        """A handle on an existing run, e.g. a background run started elsewhere."""
        run, actor = await find_run(self.registry, run_id)
        return RunHandle(self.registry, run, actor)

    async def run_batch(
        self,
        requests: Iterable[RunRequest | dict[str, Any]],
        *,
        concurrency: int = 16,
        ids: Sequence[str | int] | None = None,
        on_start: Callable[[str | int | None], None] | None = None,
        on_result: Callable[[RunResult], Awaitable[None] | None] | None = None,
    ) -> list[RunResult]:
        """Run every request, at most `concurrency` at once; results in input order.

        A request that cannot start is a failed result with `error_type` `invalid_request`.
        Cancelled (e.g. Ctrl-C): every run in flight is cancelled before this returns.
        """
        items = list(requests)
        keys: Sequence[str | int | None] = ids if ids is not None else list(range(len(items)))
        gate = asyncio.Semaphore(max(1, concurrency))
        in_flight: dict[str, RunHandle] = {}

        async def one(key: str | int | None, request: RunRequest | dict[str, Any]) -> RunResult:
            async with gate:
                if on_start is not None:
                    on_start(key)
                try:
                    handle = await self.start(request)
                except (ValidationError, UnknownProvider, InvalidProviderOptions) as exc:
                    result = invalid_result(key, _message(exc))
                else:
                    in_flight[handle.run_id] = handle
                    try:
                        result = await handle.result(key)
                    finally:
                        in_flight.pop(handle.run_id, None)
                if on_result is not None:
                    done = on_result(result)
                    if done is not None:
                        await done
                return result

        tasks = [asyncio.ensure_future(one(k, r)) for k, r in zip(keys, items, strict=True)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await self.cancel_all(list(in_flight.values()))
            raise

    async def cancel_all(self, handles: Sequence[RunHandle]) -> None:
        """Cancel runs and wait until each is terminal (their actors go back to the pool)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*(h.cancel() for h in handles), return_exceptions=True)


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)
