"""Schemathesis hooks for tests/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

The fake provider's stalling knobs do what they say: `hang_after` waits until a cancel and
`delay_s` sleeps before every chunk. A valid value of either would only make the fuzzer wait, so
valid ones are kept short; invalid values pass through untouched, to be refused. Which model
names exist is the vendor's to say (the local wire servers route by name), so a vendor model is
named as one that exists, and given a user message: Gemini and Anthropic refuse a conversation
without one, and their refusal is relayed as the vendor's 400 (docs/api.md), which no schema of
ours can rule out. Nor can a schema say that two spellings of one option (Gemini's `top_p` and
`topP`) must not both be given: that 422 is tested apart (tests/providers/test_provider_options.py)
and is the one failure dropped here. Bodies are never changed to avoid it: a mutated invalid body
could become a valid one.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis

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
    hang = options.get("hang_after")
    if isinstance(hang, int) and not isinstance(hang, bool) and hang >= 0:
        del options["hang_after"]
    delay = options.get("delay_s")
    if isinstance(delay, int | float) and not isinstance(delay, bool) and delay > 0.01:
        options["delay_s"] = 0.01
    return body


@schemathesis.hook
def filter_failure(ctx: Any, failure: Any, case: Any, response: Any) -> bool:
    return not (response.status_code == 422 and b"in another spelling" in response.content)
