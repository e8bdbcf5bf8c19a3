"""Fixtures for the vendor providers: one wire server per session, providers pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from rayruns.providers.base import Provider
from rayruns.providers.catalog import make_provider
from rayruns.providers.settings import ProviderSettings
from tests.providers.support import API_KEY, ProviderFactory
from tests.providers.wire_servers import WireServer, start_wire_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The leak check looks at every connection the other provider tests opened: it goes last.
    last = [i for i in items if i.get_closest_marker("after_all_provider_tests")]
    items[:] = [i for i in items if i not in last] + last


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "after_all_provider_tests: run after every other test of the session"
    )


@pytest.fixture(scope="session")
def wire() -> Iterator[WireServer]:
    server = start_wire_server()
    yield server
    server.stop()


@pytest.fixture
async def make(wire: WireServer) -> AsyncIterator[ProviderFactory]:
    """`make(vendor, **settings)`: a provider pointed at the wire server, closed after the test."""
    made: list[Any] = []

    def factory(vendor: str, **overrides: Any) -> Provider:
        fields = {
            f"{vendor}_api_key": API_KEY,
            f"{vendor}_base_url": wire.base_urls[vendor],  # type: ignore[index]
            "provider_timeout_s": 10.0,
            **overrides,
        }
        provider = make_provider(vendor, ProviderSettings(**fields))
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()
