"""How long after its client disconnects is a foreground run cancelled? Idle, and under load.

    python -m bench.disconnect [--trials 20] [--load 20]

Starts a local Ray and Serve with the rayruns app (its own namespace and database), then for
each trial opens a foreground stream on a provider gone silent, reads its first frame, closes the
connection and takes the run's `completed_at` minus the moment of closing. `--load` streams run
meanwhile (readers of background runs trickling a word every 50 ms). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

from bench.procs import free_port
from rayruns.actors.client import RegistryClient
from rayruns.serve_app.app import deployment
from rayruns.serve_app.settings import Settings


def _body(**kw: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "x"}], **kw}


async def _load_stream(http: httpx.AsyncClient, stop: asyncio.Event) -> None:
    words = " ".join(["w"] * 100_000)
    request = _body(background=True, provider_options={"text": words, "delay_s": 0.05})
    async with http.stream("POST", "/v1/runs", json=request) as response:
        run_id = response.headers["x-run-id"]
        async for _ in response.aiter_bytes():
            if stop.is_set():
                break
    await http.post(f"/v1/runs/{run_id}/cancel")


async def _trial(http: httpx.AsyncClient, registry: RegistryClient) -> float:
    request = _body(provider_options={"text": "a b c", "hang_after": 1}, include_pings=False)
    async with http.stream("POST", "/v1/runs", json=request) as response:
        run_id = response.headers["x-run-id"]
        async for chunk in response.aiter_bytes():
            if b"assistant_message" in chunk:
                break
        closed = time.time()
    run = await registry.wait_terminal(run_id, 120)
    assert run is not None and run.completed_at is not None, run
    assert run.status == "cancelled", run.status
    return datetime.timestamp(run.completed_at) - closed


async def _measure(base_url: str, registry: RegistryClient, trials: int, load: int) -> list[float]:
    limits = httpx.Limits(max_connections=load + 10)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        stop = asyncio.Event()
        loaders = [asyncio.create_task(_load_stream(http, stop)) for _ in range(load)]
        await asyncio.sleep(2 if load else 0)  # the load streams get going
        try:
            return [await _trial(http, registry) for _ in range(trials)]
        finally:
            stop.set()
            await asyncio.gather(*loaders, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--load", type=int, default=20)
    args = parser.parse_args()
    settings = Settings.from_env()
    settings.actors.namespace = f"rayruns-disconnect-{uuid.uuid4().hex[:6]}"
    settings.actors.db_path = Path(tempfile.mkdtemp()) / "runs.sqlite3"
    settings.serve.port = free_port()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # "local": a fresh Ray of its own, never a cluster this machine happens to run.
    ray.init(address="local", include_dashboard=False, namespace=settings.actors.namespace)
    try:
        registry = RegistryClient.connect(settings.actors, settings.providers)
        registry.wait_ready()
        serve.start(http_options={"host": "127.0.0.1", "port": settings.serve.port})
        serve.run(deployment(settings), name="rayruns", route_prefix="/")
        url = f"http://127.0.0.1:{settings.serve.port}"
        result: dict[str, Any] = {"cpus": os.cpu_count()}
        for load in (0, args.load):
            latencies = asyncio.run(_measure(url, registry, args.trials, load))
            result[f"load_{load}"] = {
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "max_ms": round(max(latencies) * 1000, 1),
                "trials": len(latencies),
            }
            print(json.dumps(result), flush=True)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
