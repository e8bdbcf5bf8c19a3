"""The baseline: the same runs served in-process by a plain FastAPI/uvicorn app, without Ray.

Each run is a `RunActor` object living in this one process (the same pump, provider, frame log
and frame JSON as rayruns, only no actor process and no Ray hop), streamed as SSE with the same
encoding (`sse_starlette`, one chunk per batch, `[DONE]` last). It is the floor for Python SSE on
this machine. It skips, besides Ray and Serve: the registry (run records, the actor pool,
conversation locks), the SQLite store (a run's record written at start and at the end, its log
kept for resumption), the actor's reset before it serves the next run, ping frames (the timer
per stream) and `GET /v1/runs/{id}/stream`. So the gap to rayruns is the price of Ray and Serve
*and* of that bookkeeping, an upper bound on the price of Ray alone.

    python -m bench.baseline --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse

from rayruns.actors.run_actor import RunActor
from rayruns.providers.settings import ProviderSettings
from rayruns.serve_app.run_body import RunBody
from rayruns.serve_app.sse import DONE_EVENT


def _encode(frames: list[Any]) -> bytes:
    return b"".join(
        ServerSentEvent(
            data=f.data, id=str(f.seq_id), event="error" if f.message_type == "error" else None
        ).encode()
        for f in frames
    )


def build_app(settings: ProviderSettings) -> FastAPI:
    app = FastAPI(title="rayruns-bench-baseline")
    runs: dict[str, RunActor] = {}

    async def start(body: RunBody) -> tuple[str, RunActor]:
        run_id = f"run-{uuid.uuid4().hex}"
        actor = runs[run_id] = RunActor(settings)
        await actor.start(run_id, body)

        async def forget() -> None:
            await actor.result(run_id)
            await asyncio.sleep(5)  # a late cancel still finds the run
            runs.pop(run_id, None)

        asyncio.get_running_loop().create_task(forget())
        return run_id, actor

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/runs", response_model=None)
    async def create_run(body: RunBody) -> Response:
        run_id, actor = await start(body)
        if not body.stream:
            result = await actor.result(run_id)
            messages = [json.loads(f.data) for f in result.frames]
            return JSONResponse({"run_id": run_id, "messages": messages})

        async def sse() -> AsyncIterator[bytes]:
            completed = False
            try:
                after, closed = 0, False
                while not closed:  # long-poll `read`, as production readers do
                    batch, closed = await actor.read(run_id, after)
                    if batch:
                        after = batch[-1].seq_id
                        yield _encode(batch)
                completed = True
                yield DONE_EVENT
            finally:
                if not completed and not body.background:
                    await actor.cancel(run_id)  # the client went away: a foreground run ends

        headers = {"X-Run-Id": run_id, "Cache-Control": "no-cache"}
        return EventSourceResponse(sse(), headers=headers, ping=0)

    @app.post("/v1/runs/{run_id}/cancel")
    async def cancel_run(run_id: str) -> Response:
        actor = runs.get(run_id)
        if actor is None:
            return JSONResponse({"detail": f"no run {run_id!r}"}, status_code=404)
        await actor.cancel(run_id)
        with contextlib.suppress(LookupError):
            result = await actor.result(run_id)
            return JSONResponse({"id": run_id, "stop_reason": result.outcome.stop_reason})
        return JSONResponse({"id": run_id})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    app = build_app(ProviderSettings())
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
