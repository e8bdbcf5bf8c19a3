"""Driving a provider stream so that a cancel is thrown *into* it, on either of its two paths.

- The generator is parked at a `yield` (the pump was busy): `athrow(RunCancelled())`, so the
  generator's `except RunCancelled` and `finally` run at that `yield`.
- The generator is awaiting the network inside `__anext__` (athrow would fail with "asynchronous
  generator is already running"): cancel the pending `__anext__` task, so CancelledError is
  raised at the generator's `await` while the run's cancel event is set.

An outside `asyncio.CancelledError` (actor shutdown, Ray cancelling the task) is never turned into
`RunCancelled`: it propagates after the generator is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import TypeVar

from rayruns.providers.base import RunCancelled

__all__ = ["RunCancelled", "drive"]

log = logging.getLogger(__name__)

E = TypeVar("E")


async def drive(gen: AsyncGenerator[E, None], cancelled: asyncio.Event) -> AsyncGenerator[E, None]:
    """Yield `gen`'s events until it ends; raise RunCancelled once `cancelled` is set."""
    waiter = asyncio.ensure_future(cancelled.wait())
    step: asyncio.Future[E] | None = None
    try:
        while True:
            if cancelled.is_set():
                await _throw_at_yield(gen)
                raise RunCancelled
            step = asyncio.ensure_future(gen.__anext__())
            await asyncio.wait((step, waiter), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                await _cancel_in_await(step)
                raise RunCancelled
            try:
                event = step.result()
            except StopAsyncIteration:
                return
            step = None
            yield event
    finally:
        waiter.cancel()
        if step is not None and not step.done():
            # An outside cancel caught us waiting: the generator gets it at its await.
            step.cancel()
            await asyncio.wait((step,))
        await _close(gen)


async def _throw_at_yield(gen: AsyncGenerator[E, None]) -> None:
    try:
        await gen.athrow(RunCancelled())
    except (RunCancelled, StopAsyncIteration):
        return
    except Exception:
        log.warning("provider stream raised while handling its cancel", exc_info=True)
        return
    log.warning("provider stream yielded after being cancelled; closing it")


async def _cancel_in_await(step: asyncio.Future[E]) -> None:
    step.cancel()
    # asyncio.wait never raises the step's own outcome, so only an outside cancel escapes here.
    await asyncio.wait((step,))
    if not step.cancelled() and isinstance(step.exception(), Exception):
        exc = step.exception()
        if not isinstance(exc, RunCancelled | StopAsyncIteration):
            log.warning("provider stream raised while handling its cancel: %r", exc)


async def _close(gen: AsyncGenerator[E, None]) -> None:
    try:
        await gen.aclose()
    except Exception:
        log.warning("provider stream raised while closing", exc_info=True)
