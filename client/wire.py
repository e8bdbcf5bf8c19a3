"""What the sync and async clients share: request bodies, answers, and the resume cursor.

The frame and record models are the server's own (`rayruns.actors.frames`, `.records`): both
are plain pydantic, so the client parses exactly what the server writes without importing Ray.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypedDict, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent
from pydantic import BaseModel, TypeAdapter, ValidationError

from rayruns.actors.frames import FRAME_ADAPTER, Frame
from rayruns.actors.records import Run, Usage
from rayruns.client.errors import APIResponseValidationError

T = TypeVar("T")

RUN_LIST: TypeAdapter[list[Run]] = TypeAdapter(list[Run])
STREAM_HEADERS: Final = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
# Statuses a resume retries: the registry restarting (503), or a proxy in front of it.
RETRY_STATUSES: Final = frozenset({502, 503, 504})


DEFAULT_TIMEOUT: Final = httpx.Timeout(30.0, read=300.0)
VERSION: Final = "0.1.0"


class CreateOptions(TypedDict, total=False):
    """`POST /v1/runs` fields besides `messages` and `stream` (README: the API by example)."""

    model: str
    stream_tokens: bool
    background: bool
    include_pings: bool
    include_return_message_types: list[str]
    max_steps: int
    conversation_id: str
    provider_options: dict[str, Any]
    metadata: dict[str, Any]
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    approvals: list[dict[str, Any]]
    multitask_strategy: str


def headers(api_key: str | None) -> dict[str, str]:
    out = {"User-Agent": f"rayruns-client/{VERSION}"}
    if api_key is not None:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def run_path(run_id: str, action: str = "") -> str:
    return f"/v1/runs/{quote(run_id, safe='')}{action}"


class FinishedRun(BaseModel):
    """`runs.create(stream=False)`: the run's record once it ended, and its content frames."""

    run: Run
    messages: list[Frame]
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The assistant's text, all steps joined."""
        return "".join(m.content for m in self.messages if m.message_type == "assistant_message")


def create_body(
    messages: Sequence[Mapping[str, Any]], stream: bool, options: CreateOptions
) -> dict[str, Any]:
    """The `POST /v1/runs` body: what the caller gave; the server's defaults for the rest."""
    return {"messages": [dict(m) for m in messages], "stream": stream, **options}


def list_params(
    conversation_id: str | None, status: str | None, limit: int | None
) -> dict[str, Any]:
    given = {"conversation_id": conversation_id, "status": status, "limit": limit}
    return {k: v for k, v in given.items() if v is not None}


def stream_params(starting_after: int, include_pings: bool | None) -> dict[str, Any]:
    params: dict[str, Any] = {"starting_after": starting_after}
    if include_pings is not None:
        params["include_pings"] = include_pings
    return params


def check_stream(response: httpx.Response) -> None:
    """An opened stream's answer must be SSE (an error answer is read and raised before)."""
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise APIResponseValidationError(f"expected an SSE answer, got {content_type!r}")


def parse(adapter: TypeAdapter[T], response: httpx.Response) -> T:
    try:
        return adapter.validate_json(response.content)
    except ValidationError as exc:
        raise APIResponseValidationError(f"unexpected answer from {response.url}: {exc}") from None


RUN: TypeAdapter[Run] = TypeAdapter(Run)
FINISHED: TypeAdapter[FinishedRun] = TypeAdapter(FinishedRun)


def run_id_of(response: httpx.Response) -> str:
    run_id: str | None = response.headers.get("x-run-id")
    if not run_id:
        raise APIResponseValidationError("the stream's answer has no X-Run-Id header")
    return run_id


class Done:
    """`[DONE]`: the stream is complete."""


DONE: Final = Done()


@dataclass
class Cursor:
    """Where a reader is in a run's log: turns SSE events into frames, each exactly once.

    Pings (no seq_id of their own) are dropped; a frame at or before the cursor (a resume that
    overlaps what was already seen) is dropped too.
    """

    last_seq_id: int = 0

    def take(self, event: ServerSentEvent) -> Frame | Done | None:
        if event.data == "[DONE]":
            return DONE
        try:
            raw = json.loads(event.data)
            if isinstance(raw, dict) and raw.get("message_type") == "ping":
                return None
            frame = FRAME_ADAPTER.validate_python(raw)
        except (ValueError, ValidationError) as exc:
            raise APIResponseValidationError(
                f"unreadable frame {event.data[:200]!r}: {exc}"
            ) from None
        if frame.seq_id <= self.last_seq_id:
            return None
        self.last_seq_id = frame.seq_id
        return frame


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded reconnects with exponential backoff and jitter; progress resets the count."""

    max_retries: int = 5
    initial_delay_s: float = 0.25
    max_delay_s: float = 8.0

    def delay_s(self, attempt: int) -> float:
        base = min(self.max_delay_s, self.initial_delay_s * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)  # jitter: resumes of many clients spread out


def gave_up(run_id: str, retries: int, lost: str) -> str:
    return f"run {run_id}: the stream was lost and {retries} resumes in a row failed ({lost})"
