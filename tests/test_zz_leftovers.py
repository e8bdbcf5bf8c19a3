"""Last in the session (the `last` marker, not the file's name): after every other test, and
after runs of its own that end each way a run ends, no run is live, every run actor Ray knows
is one the registry knows, and the idle pool is back to its size."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import body, open_sse, run_actor_names, settled_pool, wait_terminal


@pytest.mark.last
async def test_no_run_or_run_actor_is_left_behind(
    registry: Any, settings: Any, http: httpx.AsyncClient
) -> None:
    # Runs of its own, so that this check never passes on an empty session: one completes, one
    # is cancelled, one loses its client mid-stream.
    done = await http.post("/v1/runs", json=body("left behind", stream=False))
    assert done.status_code == 200, done.text
    hung, cm = await open_sse(
        http, "POST", "/v1/runs", json=body(background=True, provider_options={"hang_after": 0})
    )
    hung_id = hung.run_id
    await cm.__aexit__(None, None, None)
    assert (await http.post(f"/v1/runs/{hung_id}/cancel")).status_code == 200
    stream, cm = await open_sse(
        http, "POST", "/v1/runs", json=body(provider_options={"hang_after": 1})
    )
    await stream.next_frame()
    await cm.__aexit__(None, None, None)
    assert (await wait_terminal(registry, stream.run_id)).status == "cancelled"
    assert (await wait_terminal(registry, hung_id)).status == "cancelled"

    namespace, size = settings.actors.namespace, settings.actors.pool_size
    names = await settled_pool(registry, namespace, size)
    assert names["busy"] == [], f"runs still live after the suite: {names['busy']}"
    assert (await registry.stats())["live_runs"] == 0
    assert names["warming"] == [] and len(names["idle"]) == size, names
    # Every idle handle is a live actor (a killed one would still be listed by the registry).
    assert run_actor_names(namespace) == set(names["idle"])
