"""rayruns: LLM runs as Ray actors, streamed over SSE through Ray Serve, cancelled reliably.

Scripts use the Python API (`Runs`, `RunHandle`, `RunResult`); the HTTP server is
`rayruns serve`. Names are loaded on first use, so importing one layer (e.g. `rayruns.providers`
inside a run actor) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayruns.actors.frames import Frame
    from rayruns.actors.records import Run, RunError, RunRequest, RunStatus, Usage
    from rayruns.actors.runs import RunHandle, RunResult, Runs
    from rayruns.actors.settings import ActorSettings
    from rayruns.providers.settings import ProviderSettings

__all__ = [
    "ActorSettings",
    "Frame",
    "ProviderSettings",
    "Run",
    "RunError",
    "RunHandle",
    "RunRequest",
    "RunResult",
    "RunStatus",
    "Runs",
    "Usage",
]

_WHERE = {
    "ActorSettings": "rayruns.actors.settings",
    "Frame": "rayruns.actors.frames",
    "ProviderSettings": "rayruns.providers.settings",
    "Run": "rayruns.actors.records",
    "RunError": "rayruns.actors.records",
    "RunHandle": "rayruns.actors.runs",
    "RunRequest": "rayruns.actors.records",
    "RunResult": "rayruns.actors.runs",
    "RunStatus": "rayruns.actors.records",
    "Runs": "rayruns.actors.runs",
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
