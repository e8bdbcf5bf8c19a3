"""The Python API (`rayruns.Runs`, `RunHandle`) on the session's registry: what README documents.
`run_batch` has its own tests (test_batch_engine.py)."""

from __future__ import annotations

from typing import Any

from rayruns.actors.client import RegistryClient
from rayruns.actors.runs import Runs


def request(text: str = "alpha beta gamma", **options: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], "provider_options": options}


async def test_frames_are_typed_and_end_with_the_terminal_frames(registry: RegistryClient) -> None:
    handle = await Runs(registry).start(request())
    got = [f async for f in handle.frames()]
    assert [f.message_type for f in got] == [
        "assistant_message",
        "assistant_message",
        "assistant_message",
        "stop_reason",
        "usage_statistics",
    ]
    assert [f.seq_id for f in got] == [1, 2, 3, 4, 5]
    assert "".join(getattr(f, "content", "") for f in got[:3]) == "alpha beta gamma"
    assert (await handle.wait()).status == "completed"


async def test_attach_joins_a_live_run_and_cancels_it(registry: RegistryClient) -> None:
    started = await Runs(registry).start(
        request("one two three", hang_after=2) | {"background": True}
    )
    attached = await Runs(registry).attach(started.run_id)
    assert attached.run.status == "running"
    frames = attached.frames(after_seq=1)
    second = await anext(frames)
    assert (second.seq_id, second.message_type) == (2, "assistant_message")
    cancelled = await attached.cancel()
    assert cancelled.status == "cancelled" and cancelled.stop_reason == "cancelled"
    rest = [f async for f in frames]
    assert [f.message_type for f in rest] == ["stop_reason", "usage_statistics"]
