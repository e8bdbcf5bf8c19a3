"""`provider_options` by allow-list: nothing a client sends can send a request, or its key, to
another host; what is allowed reaches the vendor, in every spelling its SDK accepts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic.alias_generators import to_camel

from rayruns.providers.catalog import parse_options, provider_class
from rayruns.providers.errors import InvalidProviderOptions, ProviderTimeout
from rayruns.providers.options import MAX_OPTIONS_BYTES, MAX_TIMEOUT_S, VendorOptions
from tests.providers.listener import RecordingListener
from tests.providers.redirects import redirecting_options
from tests.providers.support import API_KEY, VENDORS, ProviderFactory, collect, make_call
from tests.providers.wire_servers import WireServer


@pytest.fixture(scope="module")
def listener() -> Iterator[RecordingListener]:
    with RecordingListener() as server:
        yield server


def options_class(vendor: str) -> type[VendorOptions]:
    model = provider_class(vendor).options_model
    assert issubclass(model, VendorOptions)
    return model


@pytest.mark.parametrize("vendor", VENDORS)
async def test_no_option_reaches_another_host(
    vendor: str, make: ProviderFactory, listener: RecordingListener
) -> None:
    provider = make(vendor)
    accepted = []
    for option in redirecting_options(listener.url):
        try:
            parsed = parse_options(vendor, option)
        except InvalidProviderOptions as exc:
            assert "allowed" in str(exc), (option, str(exc))
            continue
        accepted.append(option)
        # Were it accepted, run it: a leak must show up at the listener, not only here.
        call = make_call(provider, "text")
        call.options = parsed
        with contextlib.suppress(Exception):
            await collect(provider, call)
    assert listener.received == []
    assert not accepted


@pytest.mark.parametrize("vendor", VENDORS)
async def test_the_listener_would_see_a_redirected_key(
    vendor: str, make: ProviderFactory, listener: RecordingListener
) -> None:
    # The check above means something only if a request sent to the listener is seen there.
    provider = make(vendor, **{f"{vendor}_base_url": listener.url})
    before = len(listener.received)
    with pytest.raises(Exception):  # noqa: B017 - the listener answers 500, however it is mapped
        await collect(provider, make_call(provider, "text"))
    seen = listener.received[before:]
    assert seen and API_KEY.encode() in seen[0]
    del listener._server.received[before:]  # leave the listener clean for the others


@pytest.mark.parametrize(
    ("vendor", "options", "expected"),
    [
        (
            "openai",
            {"max_completion_tokens": 9, "seed": 3, "response_format": {"type": "text"}},
            {"max_completion_tokens": 9, "seed": 3, "response_format": {"type": "text"}},
        ),
        (
            "anthropic",
            {
                "stop_sequences": ["X"],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "service_tier": "auto",
            },
            {
                "stop_sequences": ["X"],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "service_tier": "auto",
            },
        ),
        (
            "google",
            {
                "topK": 3,
                "max_output_tokens": 7,
                "thinkingConfig": {"thinkingBudget": 0},
                "response_mime_type": "text/plain",
                "stopSequences": ["X"],
            },
            {
                "topK": 3,
                "maxOutputTokens": 7,
                # google-genai sends this one in snake_case; the API reads either.
                "thinkingConfig": {"thinking_budget": 0},
                "responseMimeType": "text/plain",
                "stopSequences": ["X"],
            },
        ),
    ],
)
async def test_allowed_options_reach_the_vendor_in_every_spelling(
    vendor: str,
    options: dict[str, Any],
    expected: dict[str, Any],
    make: ProviderFactory,
    wire: WireServer,
) -> None:
    provider = make(vendor)
    call = make_call(provider, "text")
    call.options = parse_options(vendor, options)
    await collect(provider, call)
    body = wire.recorder.last_request("text").body
    sent = body["generationConfig"] if vendor == "google" else body
    assert {k: sent.get(k) for k in expected} == expected


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_timeout_option_lowers_the_servers(vendor: str, make: ProviderFactory) -> None:
    provider = make(vendor, provider_timeout_s=10.0)
    call = make_call(provider, "stall-1")
    call.options = parse_options(vendor, {"timeout": 0.2})
    with pytest.raises(ProviderTimeout):
        await collect(provider, call)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_timeout_option_cannot_raise_the_servers(
    vendor: str, make: ProviderFactory
) -> None:
    provider = make(vendor, provider_timeout_s=0.2)
    call = make_call(provider, "stall-1")
    call.options = parse_options(vendor, {"timeout": 30})
    with pytest.raises(ProviderTimeout):
        await collect(provider, call)
    with pytest.raises(InvalidProviderOptions, match="timeout"):
        parse_options(vendor, {"timeout": MAX_TIMEOUT_S + 1})


@pytest.mark.parametrize("vendor", [*VENDORS, "fake"])
def test_options_over_the_size_cap_are_refused(vendor: str) -> None:
    key = {"openai": "user", "anthropic": "metadata", "google": "labels", "fake": "text"}[vendor]
    value: Any = {"user_id": "x"} if vendor == "anthropic" else "x"
    parse_options(vendor, {key: value})
    filler = "x" * MAX_OPTIONS_BYTES
    big = {"user_id": filler} if vendor == "anthropic" else filler
    with pytest.raises(InvalidProviderOptions, match=f"{MAX_OPTIONS_BYTES} allowed"):
        parse_options(vendor, {key: big})


def test_two_spellings_of_one_field_are_refused() -> None:
    with pytest.raises(InvalidProviderOptions, match="repeats 'top_k'"):
        parse_options("google", {"top_k": 1, "topK": 2})
    with pytest.raises(InvalidProviderOptions, match="repeats 'max_tokens'"):
        parse_options("google", {"max_tokens": 1, "maxOutputTokens": 2})


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_refusal_names_what_is_allowed(vendor: str) -> None:
    with pytest.raises(InvalidProviderOptions) as raised:
        parse_options(vendor, {"base_url": "http://other/", "temperature": 0.5})
    message = str(raised.value)
    assert "not allowed: 'base_url'" in message
    for name in ["temperature", "max_tokens", "timeout", *options_class(vendor).passthrough]:
        assert name in message


def _sdk_fields(vendor: str) -> dict[str, str]:
    """The SDK's typed request parameters: each spelling it accepts → the field."""
    if vendor == "openai":
        from openai.types.chat import completion_create_params

        params = completion_create_params.CompletionCreateParamsBase
        return {name: name for name in params.__required_keys__ | params.__optional_keys__}
    if vendor == "anthropic":
        from anthropic.types import message_create_params

        params = message_create_params.MessageCreateParamsBase
        return {name: name for name in params.__required_keys__ | params.__optional_keys__}
    from google.genai import types

    fields = types.GenerateContentConfig.model_fields
    return {spelled: name for name, f in fields.items() for spelled in (name, f.alias or name)}


@pytest.mark.parametrize("vendor", VENDORS)
def test_allowed_fields_are_the_sdks_own_in_its_spellings(vendor: str) -> None:
    model = options_class(vendor)
    sdk = _sdk_fields(vendor)
    assert model.passthrough <= set(sdk.values())
    assert set(model.vendor_names) <= set(sdk)
    if vendor == "google":
        # Every spelling the SDK accepts for an allowed field is accepted, and no other.
        spellings = model.spellings()
        for spelled, field in sdk.items():
            if field in model.passthrough:
                assert spellings[spelled] == field
        assert {to_camel(name) for name in model.passthrough} <= set(sdk)
