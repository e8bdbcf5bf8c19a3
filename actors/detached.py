"""Ray calls and tasks that must outlive the call that makes them.

Ray's cancel of an actor call is recursive by default, and Serve cancels a replica's request
that way when its client leaves: every Ray call submitted from the cancelled call's asyncio
context is cancelled with it, including those of tasks that copied that context. Some calls
are made precisely because a caller is going away (the cancel of a departed client's run) or
must finish whoever waits for them (a run's creation, a new pool actor's first ping, a cancel
a user asked for): those are made in a fresh context, which Ray does not count as the caller's.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def submit_detached(call: Callable[..., T], *args: Any) -> T:
    """Make a Ray call (`handle.method.remote`) that a cancel of the current call cannot reach."""
    return contextvars.Context().run(call, *args)


def spawn_detached(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run `coro` as a task whose Ray calls a cancel of the current call cannot reach."""
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
