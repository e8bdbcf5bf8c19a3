"""Fixtures for the vendor providers: one wire server per session, providers pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from rayruns.providers.base import Provider
from rayruns.providers.catalog import make_provider
from rayruns.providers.settings import ProviderSettings
from tests.providers.support import API_KEY, ProviderFactory
from tests.providers.wire_servers import WireServer


@pytest.fixture(scope="session")
def wire(vendor_server: WireServer) -> WireServer:
    """The session's one wire server: these tests' providers and the run actors' SDKs talk to
    it, so the leak check sees both."""
    return vendor_server


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
