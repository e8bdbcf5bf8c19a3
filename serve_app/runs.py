"""The `/v1/runs` routes: validate, ask the actors, encode. No provider knowledge here."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from rayruns.actors.client import RegistryClient
from rayruns.actors.frames import CONTENT_TYPES, LoggedFrame
from rayruns.actors.records import Run, RunStatus
from rayruns.actors.spec import ID_MAX
from rayruns.serve_app.auth import CallerDep
from rayruns.serve_app.errors import ApiError
from rayruns.serve_app.openapi import RUN_EVENTS, answers
from rayruns.serve_app.run_body import MessageTypes, RunBody, check_message_types
from rayruns.serve_app.settings import ServeSettings
from rayruns.serve_app.sse import FrameEncoder, FrameStream, wanted

# Every route here acts for the caller's tenant (serve_app/auth.py): another tenant's run is
# answered 404, as if it did not exist.
router = APIRouter(prefix="/v1")


class Runtime:
    """What the routes need, built once per replica."""

    def __init__(self, client: RegistryClient, settings: ServeSettings) -> None:
        self.client = client
        self.settings = settings


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]
RunIdPath = Annotated[str, Path(max_length=ID_MAX, description="a run id, as `POST /v1/runs` gave")]


def _run_json(run: Run) -> dict[str, Any]:
    data: dict[str, Any] = run.model_dump(mode="json")
    return data


@router.post(
    "/runs",
    response_model=None,
    responses=answers(400, 401, 409, 413, 422, 429, 503, sse=RUN_EVENTS),
)
async def create_run(body: RunBody, rt: RuntimeDep, caller: CallerDep) -> Response:
    run, actor = await rt.client.create_run(body, caller.tenant)
    headers = {"X-Run-Id": run.id}
    frames = rt.client.follow(run.id, 0, actor)

    def on_finish(completed: bool) -> None:
        if not completed and not body.background:
            rt.client.cancel_soon(run.id)  # the client went away: a foreground run ends

    if not body.stream:
        return await _collected(
            rt, run.id, frames, body.include_return_message_types, headers, on_finish
        )
    return _sse(
        rt,
        run.id,
        frames,
        body.include_pings,
        body.include_return_message_types,
        headers,
        on_finish,
    )


@router.get("/runs", responses=answers(401, 422, 503))
async def list_runs(
    rt: RuntimeDep,
    caller: CallerDep,
    conversation_id: Annotated[str | None, Query(max_length=ID_MAX)] = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[dict[str, Any]]:
    runs = await rt.client.list_runs(conversation_id, status, limit, caller.tenant)
    return [_run_json(r) for r in runs]


@router.get("/conversations/{conversation_id}/messages", responses=answers(401, 404, 422, 503))
async def conversation_messages(
    conversation_id: Annotated[str, Path(max_length=ID_MAX)], rt: RuntimeDep, caller: CallerDep
) -> dict[str, Any]:
    view = await rt.client.conversation(conversation_id, caller.tenant)
    if view is None:
        raise ApiError(404, f"no conversation {conversation_id!r}")
    return {
        "conversation_id": view.conversation_id,
        "messages": [
            {"run_id": run_id, **message.model_dump(mode="json", exclude_defaults=True)}
            for run_id, message in view.messages
        ],
        "pending_approvals": [
            {"tool_call_id": c.id, "name": c.name, "arguments": c.arguments, "server": c.server}
            for c in view.pending
        ],
        "pending_run_id": view.pending_run_id,
        "active_run_id": view.active_run_id,
    }


@router.get("/runs/{run_id}", responses=answers(401, 404, 422, 503))
async def get_run(run_id: RunIdPath, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    run = await rt.client.get(run_id, caller.tenant)
    if run is None:
        raise ApiError(404, f"no run {run_id!r}")
    return _run_json(run)


@router.post("/runs/{run_id}/cancel", responses=answers(401, 404, 413, 422, 503))
async def cancel_run(run_id: RunIdPath, rt: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    run = await rt.client.cancel(run_id, caller.tenant)
    if run is None:
        raise ApiError(404, f"no run {run_id!r}")
    return _run_json(run)


@router.get(
    "/runs/{run_id}/stream",
    response_model=None,
    responses=answers(400, 401, 404, 422, 503, sse=RUN_EVENTS, json_ok=False),
)
async def stream_run(
    run_id: RunIdPath,
    rt: RuntimeDep,
    caller: CallerDep,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
    include_pings: bool = True,
    include_return_message_types: Annotated[MessageTypes | None, Query()] = None,
    # A seq_id; read by hand so that a bad one is a 400, as the contract says.
    last_event_id: Annotated[
        str | None,
        Header(
            max_length=32,
            json_schema_extra={"pattern": r"^[0-9]*$"},
            description="a seq_id; empty is as if absent (EventSource sends what `id:` said)",
        ),
    ] = None,
) -> Response:
    resumed = _cursor(last_event_id)  # checked even when the query names the cursor
    after = starting_after if starting_after is not None else resumed
    try:
        types = check_message_types(include_return_message_types)
    except ValueError as exc:
        raise ApiError(422, f"include_return_message_types: {exc}") from None
    _, actor = await rt.client.source(run_id, caller.tenant)
    frames = rt.client.follow(run_id, after, actor)
    return _sse(rt, run_id, frames, include_pings, types, {"X-Run-Id": run_id}, None)


def _cursor(last_event_id: str | None) -> int:
    if last_event_id is None or last_event_id.strip() == "":
        return 0
    digits = last_event_id.strip()
    if not digits.isascii() or not digits.isdigit():
        raise ApiError(400, f"Last-Event-ID must be a seq_id (digits 0-9), not {last_event_id!r}")
    return int(digits)


def _sse(
    rt: Runtime,
    run_id: str,
    frames: AsyncGenerator[list[LoggedFrame], None],
    include_pings: bool,
    types: list[str] | None,
    headers: dict[str, str],
    on_finish: Callable[[bool], None] | None,
) -> FrameStream:
    return FrameStream(
        frames,
        FrameEncoder(run_id, types),
        headers,
        ping_interval_s=rt.settings.ping_interval_s if include_pings else None,
        on_finish=on_finish,
    )


async def _collected(
    rt: Runtime,
    run_id: str,
    frames: AsyncGenerator[list[LoggedFrame], None],
    types: list[str] | None,
    headers: dict[str, str],
    on_finish: Callable[[bool], None],
) -> JSONResponse:
    logged: list[LoggedFrame] = []
    finished = False
    try:
        async for batch in frames:
            logged.extend(batch)
        finished = True
    finally:
        on_finish(finished)
    run = await rt.client.wait_terminal(run_id)
    assert run is not None, "a started run has a record"
    messages = [
        json.loads(f.data) for f in logged if f.message_type in CONTENT_TYPES and wanted(f, types)
    ]
    return JSONResponse(
        {"run": _run_json(run), "messages": messages, "usage": _run_json(run)["usage"]},
        headers=headers,
    )
