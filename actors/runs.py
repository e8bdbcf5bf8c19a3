"""The Python API for scripts: start runs, follow their frames, cancel them, await results.

runs = Runs.connect()                       # joins Ray (or starts a local one)
handle = await runs.start({"messages": [{"role": "user", "content": "hi"}]})
async for frame in handle.frames():
    ...
result = await handle.result()              # RunResult: status, text, usage, error, timings
results = await runs.run_batch(requests, concurrency=32)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import ray
from pydantic import ValidationError

from rayruns.actors.batch import BatchEngine, BatchItem, ItemId
from rayruns.actors.client import RegistryClient
from rayruns.actors.handle import RunHandle, RunResult
from rayruns.actors.placement import init_ray
from rayruns.actors.settings import ActorSettings
from rayruns.actors.spec import RunSpec, describe
from rayruns.providers.settings import ProviderSettings


class Runs:
    """The entry point: one registry, many runs."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    @classmethod
    def connect(
        cls,
        address: str | None = None,
        settings: ActorSettings | None = None,
        provider_settings: ProviderSettings | None = None,
    ) -> Runs:
        """Join the Ray cluster at `address` (None: `RAY_ADDRESS` or this machine's `ray start`
        cluster, else a new local Ray; "local": always a new local Ray) and its registry.
        Raises RegistryFailed when the registry cannot start (its database is another's)."""
        settings = settings or ActorSettings()
        if not ray.is_initialized():
            init_ray(address, settings)
        client = RegistryClient.connect(settings, provider_settings or ProviderSettings())
        client.wait_ready()
        return cls(client)

    async def start(self, spec: RunSpec | dict[str, Any]) -> RunHandle:
        """Start a run from a spec, or from the fields of a `POST /v1/runs` body (those saying
        how HTTP delivers frames are ignored). Raises pydantic's ValidationError (a bad request,
        an unknown provider or bad `provider_options`), ConversationBusy, or LiveRunLimit (too
        many live runs: nothing was started; `run_batch` waits these out instead)."""
        spec = spec if isinstance(spec, RunSpec) else RunSpec.from_body(spec)
        run, actor = await self.client.create_run(spec)
        return RunHandle(self.client, run, actor)

    async def attach(self, run_id: str) -> RunHandle:
        """A handle on an existing run, e.g. a background run started elsewhere."""
        run, actor = await self.client.source(run_id)
        return RunHandle(self.client, run, actor)

    async def run_batch(
        self,
        specs: Iterable[RunSpec | dict[str, Any]],
        *,
        concurrency: int = 16,
        ids: Sequence[ItemId] | None = None,
        on_start: Callable[[ItemId | None], None] | None = None,
        on_result: Callable[[RunResult], Awaitable[None] | None] | None = None,
    ) -> list[RunResult]:
        """Run every spec, at most `concurrency` at once; results in input order.

        `ids` (default: the input index) go into the results. `on_start(id)` is called as each
        run starts, `on_result(result)` as each ends. A spec that cannot start (invalid, or its
        conversation busy) is a failed result with `error_type` `invalid_request`.
        Cancelled (e.g. Ctrl-C): every run in flight is cancelled before this returns.
        """
        given = list(specs)
        keys: Sequence[ItemId] = ids if ids is not None else range(len(given))
        items = [_item(n, key, spec) for n, (key, spec) in enumerate(zip(keys, given, strict=True))]
        results: list[RunResult | None] = [None] * len(items)

        def started(item: BatchItem) -> None:
            if on_start is not None:
                on_start(item.id)

        def ended(item: BatchItem, result: RunResult) -> Awaitable[None] | None:
            results[item.position] = result
            return None if on_result is None else on_result(result)

        engine = BatchEngine(self.client, concurrency, on_start=started, on_result=ended)
        await engine.run(iter(items))
        if engine.error is not None:
            raise engine.error
        return [r for r in results if r is not None]


def _item(position: int, id: ItemId, spec: RunSpec | dict[str, Any]) -> BatchItem:
    if isinstance(spec, RunSpec):
        return BatchItem(position, id, spec)
    try:
        return BatchItem(position, id, RunSpec.from_body(spec))
    except ValidationError as exc:
        return BatchItem(position, id, None, describe(exc))
