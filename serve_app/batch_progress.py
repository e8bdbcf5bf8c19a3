"""What `rayruns batch` shows on stderr: a live bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from rayruns.actors.handle import RunResult


@dataclass
class Tally:
    """This invocation's runs: `total` is how many it set out to run."""

    total: int
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    since: float = field(default_factory=time.monotonic)
    until: float | None = None  # set when the runs are over, so Ray's shutdown is not counted

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.cancelled

    def add(self, result: RunResult) -> None:
        if result.status == "completed":
            self.completed += 1
        elif result.status == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1

    def elapsed(self) -> float:
        return (self.until or time.monotonic()) - self.since

    def rate(self) -> float:
        elapsed = self.elapsed()
        return self.finished / elapsed if elapsed > 0 else 0.0

    def eta(self) -> str:
        rate = self.rate()
        if rate <= 0:
            return "?"
        return f"{(self.total - self.finished) / rate:.0f}s"

    def counts(self) -> str:
        return (
            f"{self.completed} completed, {self.failed} failed, {self.cancelled} cancelled, "
            f"{self.running} running"
        )


class PlainDisplay:
    """A line every `interval` seconds and at each tenth of the batch, for logs and pipes."""

    def __init__(self, tally: Tally, interval: float) -> None:
        self.tally = tally
        self._interval = interval
        self._tenths = 0

    def _line(self) -> None:
        t = self.tally
        sys.stderr.write(
            f"batch: {t.finished}/{t.total} finished ({t.counts()}), "
            f"{t.rate():.1f} runs/s, ETA {t.eta()}\n"
        )
        sys.stderr.flush()

    def note(self, text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def update(self) -> None:
        tenths = self.tally.finished * 10 // max(1, self.tally.total)
        if tenths > self._tenths:
            self._tenths = tenths
            self._line()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._line()

    @contextlib.asynccontextmanager
    async def shown(self) -> AsyncIterator[None]:
        beat = asyncio.create_task(self._beat())
        try:
            yield
        finally:
            beat.cancel()


class LiveDisplay:
    """A rich progress bar (cancelled runs count as failed here); notes print above it."""

    def __init__(self, tally: Tally, console: Console) -> None:
        self.tally = tally
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} done"),
            TextColumn("[red]{task.fields[bad]} failed"),
            TextColumn("[yellow]{task.fields[running]} running"),
            TextColumn("{task.fields[rate]} runs/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task: TaskID | None = None

    def note(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(self) -> None:
        t = self.tally
        if self._task is not None:
            self._progress.update(
                self._task,
                completed=t.finished,
                ok=t.completed,
                bad=t.failed + t.cancelled,
                running=t.running,
                rate=f"{t.rate():.1f}",
            )

    @contextlib.asynccontextmanager
    async def shown(self) -> AsyncIterator[None]:
        with self._progress:
            self._task = self._progress.add_task(
                "batch", total=self.tally.total, ok=0, bad=0, running=0, rate="0.0"
            )
            try:
                yield
            finally:
                self.update()


Display = PlainDisplay | LiveDisplay


def make_display(tally: Tally, interval: float) -> Display:
    console = Console(stderr=True)
    if console.is_terminal:
        return LiveDisplay(tally, console)
    return PlainDisplay(tally, interval)
