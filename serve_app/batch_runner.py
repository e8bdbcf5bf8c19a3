"""The batch's workers: at most `concurrency` runs at once, each result appended as it ends.

Workers pull from one input iterator, so only the runs in flight are held in memory. Stopping
(Ctrl-C, or an error from Ray) starts nothing new; each worker cancels its run through the
registry, waits for the run to be terminal and records it (`cancelled`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

from rayruns.actors.registry import ConversationBusy
from rayruns.actors.runs import RunResult, Runs, invalid_result
from rayruns.providers.errors import InvalidProviderOptions, UnknownProvider
from rayruns.serve_app.batch_files import Item, ResultLog, describe
from rayruns.serve_app.batch_progress import Display

log = logging.getLogger(__name__)


class BatchRunner:
    def __init__(self, runs: Runs, out: ResultLog, display: Display, concurrency: int) -> None:
        self._runs = runs
        self._out = out
        self._display = display
        self._concurrency = concurrency
        self.tally = display.tally
        self.stopping = asyncio.Event()
        self.error: Exception | None = None

    async def run(self, items: Iterator[Item], force: asyncio.Event, grace_s: float) -> None:
        """Run every item; once stopping, wait up to `grace_s` (or until `force`) for the
        workers to cancel and record their runs, then abandon them."""
        self.tally.since = time.monotonic()  # runs/s without Ray's start
        workers = [asyncio.create_task(self._worker(items)) for _ in range(self._concurrency)]
        everything: asyncio.Future[Any] = asyncio.gather(*workers)
        stopping: asyncio.Future[Any] = asyncio.create_task(self.stopping.wait())
        forced: asyncio.Future[Any] = asyncio.create_task(force.wait())
        try:
            await asyncio.wait({everything, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not everything.done():
                await asyncio.wait(
                    {everything, forced}, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            for task in (*workers, stopping, forced):
                task.cancel()
            await asyncio.gather(everything, return_exceptions=True)
            self.tally.until = time.monotonic()

    async def _worker(self, items: Iterator[Item]) -> None:
        try:
            while not self.stopping.is_set():
                item = next(items, None)
                if item is None:
                    return
                self._record(await self._run(item))
        except Exception as exc:  # Ray, the registry or a file failed: the batch cannot go on
            log.debug("batch worker failed", exc_info=True)
            self.error = self.error or exc
            self.stopping.set()

    async def _run(self, item: Item) -> RunResult:
        if item.request is None:
            message = f"line {item.line}: {item.problem}"
            self._display.note(message)
            return invalid_result(item.id, message)
        self.tally.running += 1
        self._display.update()
        try:
            return await self._follow(item)
        finally:
            self.tally.running -= 1

    async def _follow(self, item: Item) -> RunResult:
        assert item.request is not None
        try:
            handle = await self._runs.start(item.request)
        except ConversationBusy as exc:
            busy = f"conversation {exc.conversation_id!r} has an active run {exc.run_id}"
            return invalid_result(item.id, f"line {item.line}: {busy}")
        except (UnknownProvider, InvalidProviderOptions) as exc:
            return invalid_result(item.id, f"line {item.line}: {describe(exc)}")
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
                self._runs.registry.cancel.remote(handle.run_id)

    def _record(self, result: RunResult) -> None:
        self._out.write(_rounded(result))
        self.tally.add(result)
        self._display.update()


def _rounded(result: RunResult) -> RunResult:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return result.model_copy(
        update={"ttft_ms": ms(result.ttft_ms), "duration_ms": ms(result.duration_ms)}
    )
