"""Which providers exist, resolved by name; each module is imported only when first used.

`parse_options` is the one door `provider_options` go through (when a run spec is made).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from functools import cache
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_json

from rayruns.providers.base import Provider
from rayruns.providers.errors import InvalidProviderOptions, UnknownProvider
from rayruns.providers.options import MAX_OPTIONS_BYTES, VendorOptions
from rayruns.providers.settings import ProviderSettings

_MODULES: dict[str, str] = {
    "fake": "rayruns.providers.fake:FakeProvider",
    "openai": "rayruns.providers.openai:OpenAIProvider",
    "anthropic": "rayruns.providers.anthropic:AnthropicProvider",
    "google": "rayruns.providers.google:GoogleProvider",
}

PROVIDER_NAMES = tuple(_MODULES)
MODEL_NAME_PATTERN = r"[!-~]+"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)


def split_model(model: str) -> tuple[str, str]:
    """`"openai/gpt-4o"` → `("openai", "gpt-4o")`; raises UnknownProvider."""
    provider, sep, name = model.partition("/")
    if provider not in _MODULES:
        known = ", ".join(PROVIDER_NAMES)
        raise UnknownProvider(f"unknown provider {provider!r} in model {model!r}; known: {known}")
    if not sep or not name:
        raise UnknownProvider(f"model {model!r} must be '<provider>/<model name>'")
    if not _MODEL_NAME.fullmatch(name):
        raise UnknownProvider(
            f"model name {name!r} must be printable ASCII without spaces (it goes into URLs)"
        )
    return provider, name


@cache
def provider_class(provider: str) -> type[Provider]:
    module_name, _, attr = _MODULES[provider].partition(":")
    cls: type[Provider] = getattr(importlib.import_module(module_name), attr)
    return cls


def option_meanings(provider: str, names: Iterable[str]) -> set[str]:
    """The options `names` stand for under `provider`'s spellings (e.g. Gemini's
    `maxOutputTokens` stands for `max_tokens`); a name it does not know stands for itself."""
    model = provider_class(provider).options_model
    spellings = model.spellings() if issubclass(model, VendorOptions) else {}
    return {spellings.get(name, name) for name in names}


def parse_options(provider: str, options: dict[str, Any]) -> BaseModel:
    """Validate `provider_options` for `provider`; raises InvalidProviderOptions."""
    prefix = f"provider_options for {provider!r}"
    try:
        size = len(to_json(options))
    except PydanticSerializationError:
        raise InvalidProviderOptions(f"{prefix}: must be JSON values") from None
    if size > MAX_OPTIONS_BYTES:
        raise InvalidProviderOptions(
            f"{prefix}: {size} bytes as JSON, more than the {MAX_OPTIONS_BYTES} allowed"
        )
    try:
        return provider_class(provider).parse_options(options)
    except InvalidProviderOptions as exc:
        raise InvalidProviderOptions(f"{prefix}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'provider_options'}: {err['msg']}"
            for err in exc.errors()
        )
        model = provider_class(provider).options_model
        if issubclass(model, VendorOptions):
            problems += f"; {model.allowed_summary()}"
        raise InvalidProviderOptions(f"{prefix}: {problems}") from None


def make_provider(provider: str, settings: ProviderSettings) -> Provider:
    return provider_class(provider)(settings)
