"""The batch engine: many runs, at most `concurrency` at once, each result reported as it ends.

`rayruns batch` (results appended to a file in the order runs end) and `Runs.run_batch` (results
in input order) are two ways of consuming it. Workers pull from one input iterator, so only the
runs in flight are held in memory. An item that cannot run (invalid, or its conversation busy)
is a failed result with `error_type` `invalid_request`; the batch goes on. An item refused for the
live-run limit waits for room and is tried again: a limit never fails a batch's runs.

Stopping (the caller sets `stopping`, cancels the task awaiting `run`, or Ray fails) starts
nothing new; each worker cancels its run through the registry, waits until the run is terminal
and reports it (`cancelled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rayruns.actors.client import RegistryClient
from rayruns.actors.handle import RunHandle, RunResult, invalid_result
from rayruns.actors.limits import LiveRunLimit
from rayruns.actors.records import Run
from rayruns.actors.registry import ConversationBusy
from rayruns.actors.remote import ActorHandle
from rayruns.actors.spec import InvalidRun, RunSpec

log = logging.getLogger(__name__)

ItemId = str | int


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch: a spec to run, or (spec None) the problem that stops it.

    `position` is its place in the input (a line number, a list index); `where` names it in
    messages (e.g. "line 3"; empty: messages go unprefixed).
    """

    position: int
    id: ItemId | None
    spec: RunSpec | None
    problem: str = ""
    where: str = ""

    def say(self, message: str) -> str:
        return f"{self.where}: {message}" if self.where else message


OnStart = Callable[[BatchItem], None]
OnResult = Callable[[BatchItem, RunResult], Awaitable[None] | None]


class BatchEngine:
    """Runs a batch's items through the registry; `on_result` gets each result as it ends."""

    def __init__(
        self,
        client: RegistryClient,
        concurrency: int,
        *,
        on_start: OnStart | None = None,
        on_result: OnResult | None = None,
    ) -> None:
        self._client = client
        self._concurrency = max(1, concurrency)
        self._on_start = on_start
        self._on_result = on_result
        self.stopping = asyncio.Event()
        self.error: Exception | None = None  # what stopped the batch, if it was not the caller
        self.running = 0

    async def run(
        self,
        items: Iterator[BatchItem],
        *,
        grace_s: float | None = None,
        force: asyncio.Event | None = None,
    ) -> None:
        """Run every item. Once stopping, wait up to `grace_s` (None: as long as it takes) or
        until `force` for the workers to cancel and report their runs, then abandon them (their
        cancels are still sent). Cancelled, it stops the same way, then raises CancelledError."""
        workers = [asyncio.create_task(self._worker(items)) for _ in range(self._concurrency)]
        everything: asyncio.Future[Any] = asyncio.gather(*workers)
        stopping: asyncio.Future[Any] = asyncio.create_task(self.stopping.wait())
        forced: asyncio.Future[Any] = asyncio.create_task((force or asyncio.Event()).wait())
        interrupted = False
        try:
            try:
                await asyncio.wait({everything, stopping}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                interrupted = True
                self.stopping.set()
            if not everything.done():
                await asyncio.wait(
                    {everything, forced}, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            for task in (*workers, stopping, forced):
                task.cancel()
            await asyncio.gather(everything, return_exceptions=True)
        if interrupted:
            raise asyncio.CancelledError

    async def _worker(self, items: Iterator[BatchItem]) -> None:
        try:
            while not self.stopping.is_set():
                item = next(items, None)
                if item is None:
                    return
                result = await self._one(item)
                if self._on_result is not None:
                    reported = self._on_result(item, result)
                    if reported is not None:
                        await reported
        except Exception as exc:  # Ray, the registry or a consumer failed: the batch cannot go on
            log.debug("batch worker failed", exc_info=True)
            self.error = self.error or exc
            self.stopping.set()

    async def _one(self, item: BatchItem) -> RunResult:
        if item.spec is None:
            return invalid_result(item.id, item.say(item.problem))
        self.running += 1
        try:
            if self._on_start is not None:
                self._on_start(item)
            try:
                created = await self._admitted(item.spec)
            except (ConversationBusy, InvalidRun) as exc:
                return invalid_result(item.id, item.say(str(exc)))
            if created is None:  # stopped while waiting for room: it never started
                return RunResult(
                    id=item.id,
                    status="cancelled",
                    stop_reason="cancelled",
                    text="",
                    usage=None,
                    error=None,
                    run_id=None,
                    ttft_ms=None,
                    duration_ms=None,
                )
            run, actor = created
            return await self._follow(item, RunHandle(self._client, run, actor))
        finally:
            self.running -= 1

    async def _admitted(self, spec: RunSpec) -> tuple[Run, ActorHandle] | None:
        """Create the run, waiting out the live-run limit; None if the batch stops meanwhile."""
        while not self.stopping.is_set():
            try:
                return await self._client.create_run_or_cancel(spec, True)
            except LiveRunLimit as exc:
                # Spread out, so that waiting workers do not all come back at once.
                pause = exc.retry_after_s * random.uniform(0.5, 1.5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), pause)
        return None

    async def _follow(self, item: BatchItem, handle: RunHandle) -> RunResult:
        result = asyncio.create_task(handle.result(item.id))
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({result, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not result.done():
                await handle.cancel()  # returns once the registry has the run terminal
            return await result
        finally:
            stopping.cancel()
            if not result.done():
                # Abandoned (forced, or past the grace): the registry still ends the run.
                result.cancel()
                self._client.cancel_soon(handle.run_id)
