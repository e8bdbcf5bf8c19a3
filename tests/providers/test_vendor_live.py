"""Opt-in calls to the real vendor APIs: each runs only when its key is in the environment.

RAYRUNS_LIVE_OPENAI_MODEL / RAYRUNS_LIVE_ANTHROPIC_MODEL / RAYRUNS_LIVE_GOOGLE_MODEL
pick the model (defaults below); the keys are read as the providers read them.
"""

from __future__ import annotations

import os

import pytest

from rayruns.actors.cancellation import drive
from rayruns.providers.base import Message, RunCancelled, TextDelta
from rayruns.providers.catalog import make_provider
from rayruns.providers.settings import ProviderSettings
from tests.providers.support import VENDORS, collect, make_call

pytestmark = [pytest.mark.live, pytest.mark.parametrize("vendor", VENDORS)]

DEFAULT_MODELS = {
    "openai": "gpt-4.1-mini",
    "anthropic": "claude-haiku-4-5",
    "google": "gemini-2.5-flash",
}
COUNT = [Message(role="user", content="Count from 1 to 20, one number per line.")]


def live_provider(vendor: str):  # type: ignore[no-untyped-def]
    settings = ProviderSettings()
    if getattr(settings, f"{vendor}_api_key") is None:
        pytest.skip(f"no {vendor} key in the environment")
    model = os.environ.get(f"RAYRUNS_LIVE_{vendor.upper()}_MODEL", DEFAULT_MODELS[vendor])
    return make_provider(vendor, settings), model


async def test_live_stream(vendor: str) -> None:
    provider, model = live_provider(vendor)
    try:
        call = make_call(provider, model, {"max_tokens": 200}, COUNT)
        events = await collect(provider, call)
        assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
        assert call.usage.prompt_tokens > 0 and call.usage.completion_tokens > 0
        assert call.ending.outcome == "completed"
    finally:
        await provider.aclose()


async def test_live_cancel(vendor: str) -> None:
    provider, model = live_provider(vendor)
    try:
        call = make_call(provider, model, {"max_tokens": 200}, COUNT)
        events = drive(provider.stream(call), call.cancelled)
        await anext(events)
        call.cancelled.set()
        with pytest.raises(RunCancelled):
            await anext(events)
        assert call.ending.outcome == "cancelled" and call.ending.upstream_closed
    finally:
        await provider.aclose()
