"""Every error answer the suite's HTTP clients get from rayruns, recorded to be checked for leaks.

httpx's `send` is wrapped for the session (the `openai` SDK sends through httpx too), so no test
has to opt in. Only answers from the session's Serve port are ours: the vendor wire servers'
answers are deliberately vendor-shaped and are left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

# What internals look like in a body: Ray's task wrappers, tracebacks, process and node
# addresses, actor ids, source files and absolute paths.
LEAKS = re.compile(
    r"Traceback|ray::|\bpid=|\bip=|actor_id|ActorID|RayTaskError|File \"|\.py\b|line \d+, in"
    r"|site-packages|(?<![\w/])/(?:home|tmp|usr|opt|root|work|var|proc|private)/"
    r"|\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}:\d+"
)


@dataclass(frozen=True)
class ErrorAnswer:
    method: str
    url: str
    status: int
    body: str


RECORDED: list[ErrorAnswer] = []


def leaks(answers: Iterable[ErrorAnswer]) -> list[tuple[ErrorAnswer, str]]:
    return [(a, m.group(0)) for a in answers for m in [LEAKS.search(a.body)] if m is not None]


def install(ours: Callable[[httpx.Request], bool]) -> None:
    """Wrap httpx's clients' `send` so that every non-2xx answer of ours has its body recorded."""
    async_send = httpx.AsyncClient.send
    sync_send = httpx.Client.send

    async def recording_async_send(
        self: httpx.AsyncClient, request: httpx.Request, **kw: Any
    ) -> Any:
        response = await async_send(self, request, **kw)
        if response.status_code >= 400 and ours(request):
            await response.aread()  # kept by the response: its reader still gets it
            _record(request, response)
        return response

    def recording_sync_send(self: httpx.Client, request: httpx.Request, **kw: Any) -> Any:
        response = sync_send(self, request, **kw)
        if response.status_code >= 400 and ours(request):
            response.read()
            _record(request, response)
        return response

    httpx.AsyncClient.send = recording_async_send  # type: ignore[method-assign]
    httpx.Client.send = recording_sync_send  # type: ignore[method-assign]


def _record(request: httpx.Request, response: httpx.Response) -> None:
    body = response.content.decode(errors="replace")
    RECORDED.append(ErrorAnswer(request.method, str(request.url), response.status_code, body))
