"""Schemathesis hooks for tests/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

The fake provider's stalling knobs do what they say: `hang_after` waits until a cancel and
`delay_s` sleeps before every chunk. A valid value of either would only make the fuzzer wait, so
valid ones are kept short; invalid values pass through untouched, to be refused. Which model
names exist is the vendor's to say (the local wire servers route by name), so a vendor model is
named as one that exists, and given a user message: Gemini and Anthropic refuse a conversation
without one, and their refusal is relayed as the vendor's 400 (docs/api.md), which no schema of
ours can rule out. Nor can a schema say that two spellings of one option (Anthropic's `stop`
and `stop_sequences`) must not both be given: the 422 for that is tested apart
(tests/providers/test_provider_options.py), and generated bodies keep the first spelling.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis

from rayruns.providers.catalog import option_meanings, split_model
from rayruns.providers.errors import UnknownProvider
from rayruns.serve_app.openapi import MODEL_PATTERN

MODEL = re.compile(MODEL_PATTERN)


VENDOR_MODELS = {
    "openai/": "openai/gpt-4o-mini",
    "anthropic/": "anthropic/claude-3-5-haiku-latest",
    "google/": "google/gemini-2.0-flash",
}


@schemathesis.hook
def map_body(ctx: Any, body: Any) -> Any:
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str):
        for prefix, known in VENDOR_MODELS.items():
            if model.startswith(prefix) and MODEL.fullmatch(model):
                body["model"] = known
                messages = body.get("messages")
                if isinstance(messages, list) and messages:
                    messages.append({"role": "user", "content": "hello"})
    options = body.get("provider_options") if isinstance(body, dict) else None
    if not isinstance(options, dict):
        return body
    _one_spelling_each(body.get("model"), options)
    hang = options.get("hang_after")
    if isinstance(hang, int) and not isinstance(hang, bool) and hang >= 0:
        del options["hang_after"]
    delay = options.get("delay_s")
    if isinstance(delay, int | float) and not isinstance(delay, bool) and delay > 0.01:
        options["delay_s"] = 0.01
    return body


def _one_spelling_each(model: Any, options: dict[str, Any]) -> None:
    try:
        provider, _ = split_model(model if isinstance(model, str) else "fake/echo")
    except UnknownProvider:
        return
    seen: set[str] = set()
    for name in list(options):
        (meaning,) = option_meanings(provider, [name])
        if meaning in seen:
            del options[name]
        seen.add(meaning)
