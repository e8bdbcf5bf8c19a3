"""Fuzzing the live app: hypothesis builds request bodies, headers and stream cursors.

Bodies are shaped like the documented schemas (docs/api.md), each field drawn valid, near-valid
or as garbage (wrong types, huge or exotic strings, unknown fields, deep nesting, NaN). Every
answer must be below 500, an error must have the documented error shape and carry no internals,
and `/healthz` must still answer after each example. Runs the fuzzer manages to start are
cancelled before the next example, so none is left running.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import error_bodies
from tests.conftest import Secured
from tests.sse_client import Event, SSEDecoder

# Hypothesis keeps its health checks on: a strategy too slow or too filtered fails the test.
EXAMPLES = settings(max_examples=60, deadline=None)
BODY_EXAMPLES = settings(max_examples=80, deadline=None)

# --- strategies ------------------------------------------------------------------------------

# Text of every kind: ASCII, any Unicode (surrogates cannot be encoded as UTF-8 JSON), control
# characters, and long runs of one character.
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
long_text = st.builds(
    lambda c, n: c * n, st.characters(exclude_categories=["Cs"]), st.integers(0, 5000)
)
texts = st.one_of(any_text, long_text, st.sampled_from(["", " ", "\x00", "\u202e", "😀" * 8]))

numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 3.0, 1e308, -0.0, math.nan, math.inf]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
garbage = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
    ),
    max_leaves=10,
)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes anything at all."""
    return st.one_of(valid, valid, valid, garbage)


ROLES = ["system", "user", "assistant", "tool", "developer", "robot", ""]
message = st.fixed_dictionaries(
    {"role": field(st.sampled_from(ROLES)), "content": field(st.one_of(texts, st.none()))},
    optional={
        "tool_call_id": field(any_text),
        "tool_calls": field(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "id": any_text,
                        "type": st.just("function"),
                        "function": st.fixed_dictionaries(
                            {"name": any_text, "arguments": any_text}
                        ),
                    }
                ),
                max_size=2,
            )
        ),
        "name": garbage,
    },
)
messages = field(st.lists(field(message), max_size=3))

MODELS = [
    "fake/echo",
    "fake/x",
    "openai/gpt-4o",
    "anthropic/claude",
    "google/gemini",
    "nope/x",
    "fake",
    "fake/ space",
    "",
]
models = field(st.one_of(st.sampled_from(MODELS), any_text))

# The fake provider's knobs, kept quick: never `hang_after`, at most a few ms between chunks
# (a run that a non-streaming request waits for must end by itself).
fake_options = st.fixed_dictionaries(
    {},
    optional={
        "text": field(any_text),
        "delay_s": field(st.floats(0, 0.002)),
        "chunk": field(st.sampled_from(["word", "char", "byte"])),
        "reasoning": field(any_text),
        "fail": field(st.sampled_from(["timeout", "rate_limit", "auth", "bad_request", "error"])),
        "fail_after": field(st.integers(-1, 5)),
        "temperature": field(st.floats(-1, 3)),
        "stop": field(st.lists(any_text, max_size=2)),
    },
)
TOOL_NAMES = ["lookup_weather", "add", "no_such_tool", "bad name!", ""]
tools = st.lists(
    field(
        st.one_of(
            st.fixed_dictionaries(
                {"type": st.just("server"), "name": st.sampled_from(TOOL_NAMES)},
                optional={"requires_approval": field(st.booleans())},
            ),
            st.fixed_dictionaries(
                {
                    "type": st.just("function"),
                    "function": st.fixed_dictionaries(
                        {"name": st.sampled_from(TOOL_NAMES)},
                        optional={"parameters": field(st.just({"type": "object"}))},
                    ),
                }
            ),
        )
    ),
    max_size=3,
)
conversation_ids = st.one_of(st.none(), any_text.map(lambda s: f"fuzz-{s}"), long_text)
MESSAGE_TYPES = ["assistant_message", "reasoning_message", "tool_call_message", "bogus"]

RUN_FIELDS = {
    "model": models,
    "stream": field(st.booleans()),
    "stream_tokens": field(st.booleans()),
    "background": field(st.booleans()),
    "include_pings": field(st.booleans()),
    "include_return_message_types": field(
        st.one_of(st.none(), st.lists(st.sampled_from(MESSAGE_TYPES), max_size=3))
    ),
    "max_steps": field(st.integers(-5, 1005)),
    "conversation_id": field(conversation_ids),
    "tools": field(tools),
    "tool_choice": field(
        st.sampled_from(
            ["auto", "none", "required", None, {"type": "function", "function": {"name": "add"}}]
        )
    ),
    "parallel_tool_calls": field(st.one_of(st.none(), st.booleans())),
    "approvals": field(
        st.lists(
            st.fixed_dictionaries(
                {"tool_call_id": any_text, "approve": st.booleans()},
                optional={"reason": any_text},
            ),
            max_size=2,
        )
    ),
    "multitask_strategy": field(st.sampled_from(["reject", "interrupt", "enqueue", "queue"])),
    "provider_options": field(fake_options),
    "metadata": field(st.dictionaries(any_text, garbage, max_size=3)),
}
unknown_fields = st.dictionaries(
    any_text.filter(lambda k: k not in RUN_FIELDS and k != "messages"), garbage, max_size=2
)


# Valid bodies: what the contract accepts, so that runs really start (and are cancelled).
ascii_text = st.text(string.ascii_letters + string.digits + " ", min_size=1, max_size=30)
VALID_RUN = {
    "model": st.sampled_from(["fake/echo", "fake/other"]),
    "stream": st.booleans(),
    "stream_tokens": st.booleans(),
    "background": st.booleans(),
    "include_pings": st.booleans(),
    "include_return_message_types": st.one_of(
        st.none(), st.lists(st.sampled_from(MESSAGE_TYPES[:3]), max_size=2)
    ),
    "max_steps": st.integers(1, 1000),
    "conversation_id": st.one_of(st.none(), ascii_text.map(lambda s: f"fuzz-{s}")),
    "multitask_strategy": st.sampled_from(["reject", "interrupt"]),
    "provider_options": st.fixed_dictionaries(
        {},
        optional={
            "text": ascii_text,
            "chunk": st.sampled_from(["word", "char"]),
            "reasoning": ascii_text,
            "fail": st.sampled_from(["timeout", "rate_limit", "auth", "bad_request", "error"]),
            "fail_after": st.integers(0, 3),
        },
    ),
    "metadata": st.dictionaries(ascii_text, ascii_text, max_size=3),
}
valid_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system"]), "content": st.one_of(ascii_text, texts)}
    ),
    min_size=1,
    max_size=3,
)


def deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@st.composite
def json_body(
    draw: st.DrawFn,
    valid: dict[str, st.SearchStrategy[Any]],
    near: dict[str, st.SearchStrategy[Any]],
    base: dict[str, Any] | None = None,
) -> bytes:
    """A request body: valid, one field off (near-valid), every field maybe garbage, unknown
    fields, or no JSON at all; `base` holds fields every body has (the chat route's `model`)."""
    kind = draw(st.sampled_from(["valid", "valid", "near", "near", "any", "top", "raw", "deep"]))
    if kind == "raw":  # not JSON, cut-off JSON, or JSON with a lone surrogate escape
        return draw(
            st.one_of(
                st.binary(max_size=64),
                st.sampled_from([b"", b"{", b'{"messages": [', b'{"a": "\\ud800"}', b"\xff\xfe"]),
            )
        )
    if kind == "deep":  # nesting far past any parser's recursion limit, inside a field
        depth = draw(st.integers(10, 30_000))
        where = draw(st.sampled_from(["metadata", "provider_options", "messages", "top"]))
        if where == "top":
            return deep(depth).encode()
        head = json.dumps({**(base or {}), "messages": [{"role": "user", "content": "x"}]})
        return f'{head[:-1]}, "{where}": {deep(depth)}}}'.encode()
    if kind == "top":
        value: Any = draw(garbage)
    elif kind == "any":
        mixed = {k: field(v) for k, v in near.items()}
        value = {**(base or {}), "messages": draw(messages)}
        value.update(draw(st.fixed_dictionaries({}, optional=mixed)))
        value.update(draw(unknown_fields))
    else:
        value = {**(base or {}), "messages": draw(valid_messages)}
        # The provider's knobs in every valid body: they steer the run the most.
        value["provider_options"] = draw(valid["provider_options"])
        value.update(draw(st.fixed_dictionaries({}, optional=valid)))
        if kind == "near":  # one field off: near-valid, garbage, or unknown
            name = draw(st.sampled_from([*near, "messages", "unknown"]))
            if name == "unknown":
                value.update(draw(unknown_fields))
            elif name == "messages":
                value["messages"] = draw(messages)
            else:
                value[name] = draw(st.one_of(near[name], garbage))
    # allow_nan: NaN and Infinity go out as the bare words JSON does not have.
    return json.dumps(value, allow_nan=True).encode()


# Header values h11 can send: visible Latin-1, with inner spaces.
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
).map(str.strip)


# --- checks ----------------------------------------------------------------------------------


def check_error(answer: httpx.Response, openai_shape: bool = False) -> None:
    """Below 500, the documented error body, nothing internal in it."""
    request = answer.request
    assert answer.status_code < 500, (request.method, request.url, answer.status_code, answer.text)
    if answer.status_code < 400:
        return
    assert error_bodies.LEAKS.search(answer.text) is None, answer.text
    body = answer.json()
    # 413 comes from the body limit, before any route: `{"detail"}`, as the OpenAPI document says.
    if openai_shape and answer.status_code != 413:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str), error
        return
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert set(body) <= {"detail", "errors", "run_id"}, body
    for err in body.get("errors", []):
        assert set(err) == {"loc", "msg", "type"}, err
        assert isinstance(err["loc"], list) and isinstance(err["msg"], str), err
    if answer.status_code == 401:
        assert answer.headers["www-authenticate"] == "Bearer"


def events(response: httpx.Response) -> list[Event]:
    decoder = SSEDecoder()
    out: list[Event] = []
    for chunk in response.iter_bytes():
        out += decoder.feed(chunk)
    return out


def healthy(client: httpx.Client) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}, answer.text


def finish_sse(client: httpx.Client, response: httpx.Response) -> list[Event]:
    """A started run's SSE answer: its run cancelled (ending it now), then read to its end."""
    run_id = response.headers["x-run-id"]
    cancelled = client.post(f"/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] in ("completed", "failed", "cancelled"), cancelled.text
    got = events(response)
    assert got and got[-1].done, got[-3:]
    return got


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


# --- the fuzz tests --------------------------------------------------------------------------


@BODY_EXAMPLES
@given(
    payload=json_body(VALID_RUN, RUN_FIELDS),
    content_type=st.sampled_from(["application/json", None]),
)
def test_create_run_bodies(client: httpx.Client, payload: bytes, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    with client.stream("POST", "/v1/runs", content=payload, headers=headers) as answer:
        note_event(f"answered {answer.status_code}")
        if answer.status_code == 200:
            if answer.headers["content-type"].startswith("text/event-stream"):
                got = finish_sse(client, answer)
                for event in got[:-1]:
                    assert "message_type" in event.json, event
            else:
                result = json.loads(answer.read())
                assert set(result) == {"run", "messages", "usage"}, result
                assert result["run"]["status"] in ("completed", "failed", "cancelled"), result
                assert result["run"]["id"] == answer.headers["x-run-id"]
        else:
            answer.read()
            check_error(answer)
    healthy(client)


CHAT_FIELDS = {
    "model": models,
    "stream": field(st.booleans()),
    "stream_options": field(st.fixed_dictionaries({}, optional={"include_usage": st.booleans()})),
    "temperature": field(st.floats(-1, 3)),
    "max_tokens": field(st.integers(-2, 100)),
    "max_completion_tokens": field(st.integers(-2, 100)),
    "top_p": field(st.floats(-1, 2)),
    "stop": field(st.one_of(any_text, st.lists(any_text, max_size=2))),
    "n": field(st.sampled_from([1, 2, 1.0])),
    "user": field(any_text),
    "background": field(st.booleans()),
    "metadata": RUN_FIELDS["metadata"],
    "conversation_id": RUN_FIELDS["conversation_id"],
    "tools": RUN_FIELDS["tools"],
    "max_steps": RUN_FIELDS["max_steps"],
    "multitask_strategy": RUN_FIELDS["multitask_strategy"],
    # Not `fail`: a provider failure before the first chunk is answered with its documented
    # status (502, 504), which this test would take for a server fault.
    "provider_options": field(
        st.fixed_dictionaries(
            {}, optional={"text": any_text, "reasoning": any_text, "chunk": st.just("char")}
        )
    ),
}


VALID_CHAT = {
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "temperature": st.floats(0, 2),
    "max_tokens": st.integers(1, 100),
    "top_p": st.floats(0, 1),
    "stop": st.lists(ascii_text, max_size=2),
    "user": ascii_text,
    "background": st.booleans(),
    "metadata": VALID_RUN["metadata"],
    "conversation_id": VALID_RUN["conversation_id"],
    "max_steps": VALID_RUN["max_steps"],
    "provider_options": st.fixed_dictionaries(
        {}, optional={"text": ascii_text, "reasoning": ascii_text, "chunk": st.just("char")}
    ),
}


@BODY_EXAMPLES
@given(payload=json_body(VALID_CHAT, CHAT_FIELDS, {"model": "fake/echo"}))
def test_chat_completion_bodies(client: httpx.Client, payload: bytes) -> None:
    headers = {"content-type": "application/json"}
    with client.stream("POST", "/v1/chat/completions", content=payload, headers=headers) as answer:
        note_event(f"answered {answer.status_code}")
        if answer.status_code == 200:
            if answer.headers["content-type"].startswith("text/event-stream"):
                finish_sse(client, answer)
            else:
                completion = json.loads(answer.read())
                assert completion["object"] == "chat.completion", completion
                assert completion["id"].startswith("chatcmpl-"), completion
        else:
            answer.read()
            check_error(answer, openai_shape=True)
    healthy(client)


@pytest.fixture(scope="module")
def finished_run(client: httpx.Client) -> tuple[str, int]:
    """A completed run of eight content frames: its id and its last seq_id."""
    words = "one two three four five six seven eight"
    answer = client.post(
        "/v1/runs", json={"messages": [{"role": "user", "content": words}], "stream": False}
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["run"]["status"] == "completed", result
    return result["run"]["id"], len(result["messages"]) + 2  # + stop_reason, usage_statistics


def strict_cursor(value: str) -> int | None:
    """What the contract calls a cursor: a non-negative integer (surrounding blanks allowed)."""
    text = value.strip(" \t")
    if text == "":
        return 0
    return int(text) if re.fullmatch(r"[0-9]{1,30}", text) else None


def query_cursor(value: str) -> int | None:
    """A query integer: as for the header, and an integral decimal (`3.0`) counts, as it does
    in bodies (docs/api.md)."""
    found = lenient_cursor(value)
    if found is not None:
        return found
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def lenient_cursor(value: str) -> int | None:
    """What Python would read as an integer (`+1`, `1_0`, non-ASCII digits or blanks)."""
    try:
        return int(value.strip()) if value.strip() else 0
    except ValueError:
        return None


cursor_text = st.one_of(
    st.integers(-3, 14).map(str),
    st.sampled_from(["", " 3 ", "+2", "1_0", "0x1", "1.0", "1e1", "-0", "٣", "\xa04", "99" * 20]),
    header_text,
)


@EXAMPLES
@given(
    last_event_id=st.one_of(st.none(), cursor_text),
    starting_after=st.one_of(st.none(), cursor_text),
    include_pings=st.sampled_from([None, "true", "false", "0", "yes", "maybe"]),
    types=st.lists(st.sampled_from(MESSAGE_TYPES), max_size=2),
)
def test_stream_cursors(
    client: httpx.Client,
    finished_run: tuple[str, int],
    last_event_id: str | None,
    starting_after: str | None,
    include_pings: str | None,
    types: list[str],
) -> None:
    run_id, last = finished_run
    if last_event_id is not None:  # HTTP trims a header's value: the server sees it trimmed
        last_event_id = last_event_id.strip(" \t") or None
    # Sent as UTF-8; the server reads header bytes as Latin-1, as HTTP says.
    raw_header = None if last_event_id is None else last_event_id.encode()
    last_event_id = None if raw_header is None else raw_header.decode("latin-1")
    params: dict[str, Any] = {"include_return_message_types": types}
    if starting_after is not None:
        params["starting_after"] = starting_after
    if include_pings is not None:
        params["include_pings"] = include_pings
    headers = {"last-event-id": raw_header} if raw_header else {}
    with client.stream("GET", f"/v1/runs/{run_id}/stream", params=params, headers=headers) as r:
        note_event(f"answered {r.status_code}")
        if r.status_code != 200:
            r.read()
            check_error(r)
        got = events(r) if r.status_code == 200 else []
    header = None if last_event_id is None else lenient_cursor(last_event_id)
    query = None if starting_after is None else query_cursor(starting_after)
    if last_event_id is not None and (header is None or header < 0):
        assert r.status_code in (400, 422), (last_event_id, r.status_code)
    if starting_after is not None and (query is None or query < 0):
        assert r.status_code == 422, (starting_after, r.status_code)
    if (
        (
            last_event_id is None
            or (strict_cursor(last_event_id) is not None and len(last_event_id) <= 32)
        )
        and (starting_after is None or re.fullmatch(r"[0-9]{1,18}", starting_after))
        and include_pings in (None, "true", "false", "0")
        and "bogus" not in types
    ):
        assert r.status_code == 200, (last_event_id, starting_after, r.status_code)
    if r.status_code != 200:
        healthy(client)
        return
    # The cursor the stream went by: the query's, else the header's.
    cursor = query if starting_after is not None else (0 if last_event_id is None else header)
    assert cursor is not None and cursor >= 0, (starting_after, last_event_id, "answered 200")
    logged = [e for e in got if not e.done and e.id_field_seen]
    seq_ids = [e.json["seq_id"] for e in logged]
    assert got[-1].done and sum(e.done for e in got) == 1, got[-3:]
    if not types or "assistant_message" in types:
        assert seq_ids == list(range(cursor + 1, last + 1)), (cursor, seq_ids)
    else:  # content filtered out: only the terminal frames past the cursor
        assert seq_ids == [s for s in (last - 1, last) if s > cursor], (cursor, seq_ids)
    assert all(str(e.json["seq_id"]) == e.last_event_id for e in logged)
    healthy(client)


ID_ROUTES = [
    ("GET", "/v1/runs/{}"),
    ("POST", "/v1/runs/{}/cancel"),
    ("GET", "/v1/runs/{}/stream"),
    ("GET", "/v1/conversations/{}/messages"),
]


@EXAMPLES
@given(
    route=st.sampled_from(ID_ROUTES),
    run_id=st.one_of(any_text, long_text, st.sampled_from(["run-", "run-0", "%00", "a/b"])),
)
def test_unknown_run_ids(client: httpx.Client, route: tuple[str, str], run_id: str) -> None:
    path = quote(run_id, safe="")
    if path in ("", ".", ".."):
        path = quote(run_id + "x", safe="")
    method, template = route
    answer = client.request(method, template.format(path))
    # A `/` in the id (sent as %2F) is a path separator to the router: another route, or the
    # trailing-slash redirect; never the run routes' own answer for a bad id.
    expected = (307, 404, 405, 422) if "/" in run_id else (404, 422)
    assert answer.status_code in expected, (method, path, answer.status_code, answer.text)
    check_error(answer)
    healthy(client)


@EXAMPLES
@given(
    status=st.one_of(st.none(), st.sampled_from(["running", "done", ""]), header_text),
    limit=st.one_of(st.none(), st.integers(-(2**40), 2**40).map(str), header_text),
    conversation_id=st.one_of(st.none(), any_text, long_text),
)
def test_list_queries(
    client: httpx.Client, status: str | None, limit: str | None, conversation_id: str | None
) -> None:
    params = {
        k: v
        for k, v in {"status": status, "limit": limit, "conversation_id": conversation_id}.items()
        if v is not None
    }
    answer = client.get("/v1/runs", params=params)
    check_error(answer)
    if answer.status_code == 200:
        runs = answer.json()
        assert isinstance(runs, list) and len(runs) <= int(limit or 50)
        assert all(r["status"] == status for r in runs) if status else True
    healthy(client)


ROUTES = [
    ("GET", "/v1/runs", None),
    ("POST", "/v1/runs", b'{"messages": [{"role": "user", "content": "hi"}], "stream": false}'),
    ("POST", "/v1/chat/completions", b'{"model": "fake/echo", "messages": []}'),
    ("POST", "/v1/session", b"{}"),
    ("DELETE", "/v1/session", None),
    ("GET", "/v1/runs/run-0/stream", None),
    ("GET", "/healthz", None),
]
SCHEMES = ["Bearer ", "bearer ", "Basic ", "", "Bearer", "Token "]


@EXAMPLES
@given(
    route=st.sampled_from(ROUTES),
    authorization=st.one_of(
        st.none(), st.builds(str.__add__, st.sampled_from(SCHEMES), header_text)
    ),
    content_type=st.one_of(
        st.none(),
        st.sampled_from(["application/json", "text/plain", "multipart/form-data", "*/*"]),
        header_text,
    ),
    cookie=st.one_of(st.none(), header_text.map(lambda v: f"rayruns_session={v}"), header_text),
    last_event_id=st.one_of(st.none(), header_text),
    forwarded=st.one_of(st.none(), st.sampled_from(["https", "http"]), header_text),
)
def test_headers_on_the_secured_app(
    secured: Secured,
    route: tuple[str, str, bytes | None],
    authorization: str | None,
    content_type: str | None,
    cookie: str | None,
    last_event_id: str | None,
    forwarded: str | None,
) -> None:
    """Keys exist there: junk credentials must be a clean 401, never a 5xx or a way in."""
    method, path, content = route
    raw = {
        "authorization": authorization,
        "content-type": content_type,
        "cookie": cookie,
        "last-event-id": last_event_id,
        "x-forwarded-proto": forwarded,
    }
    # HTTP trims a header's value; an empty one is not sent.
    headers = {k: v.strip(" \t").encode("latin-1") for k, v in raw.items() if v and v.strip(" \t")}
    with httpx.Client(timeout=30) as c:
        answer = c.request(method, f"{secured.url}{path}", content=content, headers=headers)
        check_error(answer, openai_shape=path.endswith("/chat/completions"))
        open_routes = ("/healthz", "/v1/session")
        if not path.endswith(open_routes):
            assert answer.status_code == 401, (method, path, headers, answer.text)
        health = c.get(f"{secured.url}/healthz")
        assert health.status_code == 200, health.text
