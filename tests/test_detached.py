"""A call made because its caller is going away must survive that caller's cancellation.

Ray cancels a call's children with it (recursively: what Serve does to a request whose client
left). Here a child call waits in its callee's queue while its caller is cancelled; it must
still run.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import ray
from ray.exceptions import TaskCancelledError

from rayruns.actors.client import RegistryClient

pytestmark = pytest.mark.usefixtures("ray_session")


@ray.remote(concurrency_groups={"control": 1})
class Gate:
    """A stand-in registry whose `cancel` calls queue behind `hold` until `open`."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._cancelled: list[str] = []

    def hold(self) -> None:
        self._open.wait(60)

    def cancel(self, run_id: str) -> None:
        self._cancelled.append(run_id)

    @ray.method(concurrency_group="control")
    def open(self) -> None:
        self._open.set()

    @ray.method(concurrency_group="control")
    def cancelled(self) -> list[str]:
        return list(self._cancelled)


@ray.remote
class Leaver:
    """A request handler whose client left: it sends the run's cancel, then is cancelled."""

    def __init__(self) -> None:
        self._sent = asyncio.Event()

    async def leave(self, gate: Any, run_id: str) -> None:
        RegistryClient(gate).cancel_soon(run_id)
        self._sent.set()
        await asyncio.Event().wait()

    async def sent(self) -> None:
        await self._sent.wait()


async def test_a_cancel_sent_by_a_leaving_caller_survives_the_callers_cancellation() -> None:
    gate = Gate.remote()  # type: ignore[attr-defined]
    leaver = Leaver.remote()  # type: ignore[attr-defined]
    held = gate.hold.remote()
    leaving = leaver.leave.remote(gate, "run-left")
    await leaver.sent.remote()
    ray.cancel(leaving)  # recursive, as Serve cancels the request of a client that left
    with pytest.raises(TaskCancelledError):
        await leaving
    await gate.open.remote()
    await held
    for _ in range(500):
        if await gate.cancelled.remote() == ["run-left"]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the cancel was cancelled with the call that sent it")
