"""rayruns: LLM runs as Ray actors, streamed over SSE through Ray Serve, cancelled reliably.

Scripts use the Python API (`Runs`, `RunSpec`, `RunHandle`, `RunResult`); the HTTP server is
`rayruns serve`; `Client` and `AsyncClient` talk to it over HTTP, without Ray. Names are
loaded on first use, so importing one layer (e.g. `rayruns.providers` inside a run actor) does
not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayruns.actors.batch import BatchEngine, BatchItem
    from rayruns.actors.client import RegistryClient, UnknownRun
    from rayruns.actors.frames import Frame
    from rayruns.actors.handle import RunHandle, RunResult
    from rayruns.actors.records import Run, RunError, RunStatus, Usage
    from rayruns.actors.registry import ConversationBusy
    from rayruns.actors.runs import Runs
    from rayruns.actors.settings import ActorSettings
    from rayruns.actors.spec import InvalidRun, RunSpec
    from rayruns.client import AsyncClient, Client
    from rayruns.providers.settings import ProviderSettings

__all__ = [
    "ActorSettings",
    "AsyncClient",
    "BatchEngine",
    "BatchItem",
    "Client",
    "ConversationBusy",
    "Frame",
    "InvalidRun",
    "ProviderSettings",
    "Run",
    "RunError",
    "RegistryClient",
    "RunHandle",
    "RunResult",
    "RunSpec",
    "RunStatus",
    "Runs",
    "UnknownRun",
    "Usage",
]

_WHERE = {
    "ActorSettings": "rayruns.actors.settings",
    "AsyncClient": "rayruns.client",
    "BatchEngine": "rayruns.actors.batch",
    "BatchItem": "rayruns.actors.batch",
    "Client": "rayruns.client",
    "ConversationBusy": "rayruns.actors.registry",
    "Frame": "rayruns.actors.frames",
    "InvalidRun": "rayruns.actors.spec",
    "ProviderSettings": "rayruns.providers.settings",
    "Run": "rayruns.actors.records",
    "RunError": "rayruns.actors.records",
    "RegistryClient": "rayruns.actors.client",
    "RunHandle": "rayruns.actors.handle",
    "RunResult": "rayruns.actors.handle",
    "RunSpec": "rayruns.actors.spec",
    "RunStatus": "rayruns.actors.records",
    "Runs": "rayruns.actors.runs",
    "UnknownRun": "rayruns.actors.client",
    "Usage": "rayruns.actors.records",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'rayruns' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
