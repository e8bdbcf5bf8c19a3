"""Opt-in calls to the real, paid vendor APIs.

Deselected by default (pyproject's `addopts`); `.venv/bin/pytest -m live` runs them. Each vendor
runs only with its key in RAYRUNS_LIVE_OPENAI_API_KEY / RAYRUNS_LIVE_ANTHROPIC_API_KEY /
RAYRUNS_LIVE_GOOGLE_API_KEY: never the SDKs' own variables (OPENAI_API_KEY, …) or the server's
RAYRUNS_<VENDOR>_API_KEY, so a key in the environment for other reasons is never spent here.
RAYRUNS_LIVE_<VENDOR>_MODEL picks the model (defaults below).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import pytest

from rayruns.actors.cancellation import drive
from rayruns.providers.base import Message, RunCancelled, TextDelta
from rayruns.providers.catalog import make_provider
from rayruns.providers.settings import ProviderSettings
from tests.providers.support import VENDORS, collect, make_call

each_vendor = pytest.mark.parametrize("vendor", VENDORS)

DEFAULT_MODELS = {
    "openai": "gpt-4.1-mini",
    "anthropic": "claude-haiku-4-5",
    "google": "gemini-2.5-flash",
}
COUNT = [Message(role="user", content="Count from 1 to 20, one number per line.")]


def live_key_variable(vendor: str) -> str:
    return f"RAYRUNS_LIVE_{vendor.upper()}_API_KEY"


def live_settings(vendor: str, environ: Mapping[str, str]) -> ProviderSettings | None:
    """Settings holding only the live key (None without one); every vendor's key set, so no
    environment fallback fills one in."""
    key = environ.get(live_key_variable(vendor))
    if not key:
        return None
    keys = {f"{v}_api_key": (key if v == vendor else "unused") for v in VENDORS}
    return ProviderSettings(**keys)


@each_vendor
def test_only_the_live_variables_give_a_key(monkeypatch: pytest.MonkeyPatch, vendor: str) -> None:
    generic = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"}
    environ = {name: "sk-generic" for name in generic} | {
        f"RAYRUNS_{vendor.upper()}_API_KEY": "sk-server"
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert live_settings(vendor, environ) is None
    settings = live_settings(vendor, environ | {live_key_variable(vendor): "sk-live"})
    assert settings is not None
    key = getattr(settings, f"{vendor}_api_key")
    assert key is not None and key.get_secret_value() == "sk-live"


def test_live_tests_are_deselected_by_default() -> None:
    keys = {live_key_variable(vendor): "sk-live" for vendor in VENDORS}
    env = {**os.environ, **keys, "PYTEST_ADDOPTS": ""}
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", __file__],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "test_live_stream" not in listed and "test_live_cancel" not in listed, listed
    assert "test_only_the_live_variables_give_a_key[openai]" in listed, listed


def live_provider(vendor: str):  # type: ignore[no-untyped-def]
    settings = live_settings(vendor, os.environ)
    if settings is None:
        pytest.skip(f"no {live_key_variable(vendor)} in the environment")
    model = os.environ.get(f"RAYRUNS_LIVE_{vendor.upper()}_MODEL", DEFAULT_MODELS[vendor])
    return make_provider(vendor, settings), model


@pytest.mark.live
@each_vendor
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


@pytest.mark.live
@each_vendor
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
