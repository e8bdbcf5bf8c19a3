"""RunHandle: one started run, followed, cancelled or awaited; RunResult: how it ended."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

from pydantic import BaseModel

from rayruns.actors.client import RegistryClient
from rayruns.actors.frames import Frame, LoggedFrame, parse_frame
from rayruns.actors.records import Run, RunError, RunStatus, Usage
from rayruns.actors.remote import ActorHandle


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


class RunHandle:
    """A started run."""

    def __init__(self, client: RegistryClient, run: Run, actor: ActorHandle | None) -> None:
        self._client = client
        self._actor = actor
        self.run = run
        self._started = time.perf_counter()

    @property
    def run_id(self) -> str:
        return self.run.id

    async def batches(self, after_seq: int = 0) -> AsyncIterator[list[LoggedFrame]]:
        async for batch in self._client.follow(self.run_id, after_seq, self._actor):
            yield batch

    async def frames(self, after_seq: int = 0) -> AsyncIterator[Frame]:
        """Every frame after `after_seq`, typed, through the terminal frames."""
        async for batch in self.batches(after_seq):
            for logged in batch:
                yield parse_frame(logged)

    async def cancel(self) -> Run:
        """Cancel the run; returns its record once terminal."""
        run = await self._client.cancel(self.run_id)
        assert run is not None, "a started run has a record"
        self.run = run
        return run

    async def wait(self) -> Run:
        """The run's record once terminal."""
        run = await self._client.wait_terminal(self.run_id)
        assert run is not None, "a started run has a record"
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
