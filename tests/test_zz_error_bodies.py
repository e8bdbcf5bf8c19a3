"""No error answer carries internals: after the rest of the suite, every error body it got (see
tests/error_bodies.py) is checked, with the answers that used to carry Ray's tracebacks made
here too, so that this file alone still checks them."""

from __future__ import annotations

import httpx
import pytest

from tests import error_bodies
from tests.conftest import body

HANGING = {"hang_after": 0}


async def test_the_targeted_errors_are_clean(http: httpx.AsyncClient) -> None:
    # 409: a busy conversation (raised in the registry, across Ray).
    conversation = "conv-error-bodies"
    first = body("hold", background=True, conversation_id=conversation, provider_options=HANGING)
    async with http.stream("POST", "/v1/runs", json=first) as r:
        assert r.status_code == 200
        run_id = r.headers["x-run-id"]
    try:
        busy = await http.post("/v1/runs", json={**first, "background": False})
        assert busy.status_code == 409
        assert busy.json() == {
            "detail": f"conversation {conversation!r} has an active run {run_id}",
            "run_id": run_id,
        }
        chat_busy = await http.post(
            "/v1/chat/completions",
            json={
                "model": "fake/echo",
                "messages": [{"role": "user", "content": "hi"}],
                "conversation_id": conversation,
            },
        )
        assert chat_busy.status_code == 409
        assert chat_busy.json()["error"]["code"] == "conversation_busy"
    finally:
        await http.post(f"/v1/runs/{run_id}/cancel")

    # 422: provider_options the registry refuses.
    bad_options = await http.post(
        "/v1/runs", json=body("hi", model="openai/gpt-4o", provider_options={"temperature": "hot"})
    )
    assert bad_options.status_code == 422, bad_options.text
    assert bad_options.json()["detail"].startswith("provider_options for 'openai'")

    # Bad chat options: 422 in OpenAI's shape.
    chat_bad = await http.post(
        "/v1/chat/completions",
        json={
            "model": "fake/echo",
            "messages": [{"role": "user", "content": "hi"}],
            "provider_options": {"no_such": 1},
        },
    )
    assert chat_bad.status_code == 422, chat_bad.text
    assert chat_bad.json()["error"]["message"].startswith("provider_options for 'fake'")

    for answer in (busy, chat_busy, bad_options, chat_bad):
        assert error_bodies.LEAKS.search(answer.text) is None, answer.text


@pytest.mark.after_all_provider_tests
def test_no_error_body_of_the_suite_leaks_internals() -> None:
    recorded = error_bodies.RECORDED
    assert {a.status for a in recorded} >= {400, 409, 422}, "the recorder saw the suite's errors"
    leaked = error_bodies.leaks(recorded)
    assert not leaked, "\n".join(
        f"{a.status} {a.method} {a.url}: {hit!r} in {a.body[:300]}" for a, hit in leaked
    )
