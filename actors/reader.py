"""Following a live run actor's log: pushed to this process's sink, with `read` as the exact
fallback.

One Ray call (`attach`) per subscription; then batches arrive over the sink's socket. Whenever
a subscription ends without the closing batch (a dropped socket, an overflow, a reset), or a batch
does not continue the reader's cursor, one long-poll `read` fills the gap and the reader attaches
again. A sink the actor cannot reach or that refuses it leaves the reader on `read` alone. The
reader keeps its own cursor, so whichever road a frame took, it is yielded once, in order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import ray
from ray.exceptions import RayTaskError

from rayruns.actors.frames import LoggedFrame
from rayruns.actors.remote import ActorHandle
from rayruns.actors.sink import FrameSink

log = logging.getLogger(__name__)


async def live_batches(
    actor: ActorHandle, run_id: str, after_seq: int, sink: FrameSink | None
) -> AsyncGenerator[list[LoggedFrame], None]:
    """Batches of the run's frames after `after_seq`, through its terminal frames.

    Raises what `RunActor.read` raises once the actor is gone (RayActorError, NotThisRun); the
    caller then takes the rest from the registry.
    """
    cursor = after_seq
    while True:
        if sink is not None:
            subscription = sink.subscribe()
            try:
                try:
                    await actor.attach.remote(run_id, sink.address, subscription.id, cursor)
                except RayTaskError as exc:
                    if not isinstance(exc.cause, OSError):
                        raise _cause(exc) from None
                    log.info("run %s: frames cannot be pushed here (%s)", run_id, exc.cause)
                    sink = None  # unreachable or refused: read from now on
                else:
                    while (got := await subscription.next()) is not None:
                        frames, closed = got
                        fresh, gap = _continuing(frames, cursor)
                        if fresh:
                            cursor = fresh[-1].seq_id
                            yield fresh
                        if gap:
                            log.info("run %s: pushed frames skip past %d; reading", run_id, cursor)
                            break
                        if closed:
                            return
            finally:
                subscription.close()
        pending = actor.read.remote(run_id, cursor)
        answered = False
        try:
            batch: list[LoggedFrame]
            batch, closed = await pending
            answered = True
        except RayTaskError as exc:
            answered = True
            raise _cause(exc) from None
        finally:
            if not answered:  # the reader went away mid-read: stop the actor's wait
                ray.cancel(pending, recursive=False)
        if batch:
            cursor = batch[-1].seq_id
            yield batch
        if closed:
            return


def _continuing(frames: list[LoggedFrame], cursor: int) -> tuple[list[LoggedFrame], bool]:
    """The frames that continue the log after `cursor` (those already seen are skipped), and
    whether a frame further on skipped a `seq_id`."""
    fresh: list[LoggedFrame] = []
    for frame in frames:
        if frame.seq_id <= cursor:
            continue
        if frame.seq_id != cursor + 1:
            return fresh, True
        fresh.append(frame)
        cursor += 1
    return fresh, False


def _cause(exc: RayTaskError) -> Any:
    cause = exc.cause
    return cause if isinstance(cause, BaseException) else exc
