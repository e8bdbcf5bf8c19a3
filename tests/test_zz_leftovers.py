"""After every other test of the session: no run still live, no run actor beyond the pool."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import settled_actor_names


@pytest.mark.after_all_provider_tests
async def test_no_run_or_run_actor_is_left_behind(registry: Any, settings: Any) -> None:
    names = await settled_actor_names(registry, settings.actors.namespace)
    assert names["busy"] == [], f"runs still live after the suite: {names['busy']}"
    assert (await registry.stats())["live_runs"] == 0
