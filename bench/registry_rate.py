"""How many run transitions the registry handles per second of its own CPU (docs/scaling.md).

    .venv/bin/python -m bench.registry_rate [--runs 600] [--levels 8,32,96] [--db-url URL]

Two measurements, printed as one JSON object:

- `store`: the SQLite store alone, in this process: insert (created), set_running and finish
  (terminal, with a 5-frame log) for `--runs` runs; transitions per CPU-second and per second.
  With `--db-url postgresql://...` (an empty database), `store_postgres` measures the PostgreSQL
  store the same way: its rate is bound by round trips to the server, so the wall-clock rate is
  the one to read.
- `registry`: a local Ray, the registry actor and a warm pool; zero-delay fake runs started and
  awaited through `RegistryClient` (create_run, wait_terminal: no frame reading, so the registry
  is what is loaded) at each concurrency level. The registry is one asyncio process, so one core
  is its ceiling: its CPU-seconds per run give the rate at which it saturates, and its CPU
  share at each level shows how close the level came.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import ray

from rayruns.actors.client import RegistryClient
from rayruns.actors.database import Database, PostgresDatabase, SqliteDatabase
from rayruns.actors.frames import LoggedFrame
from rayruns.actors.placement import init_ray
from rayruns.actors.records import Outcome, Run, Usage, utcnow
from rayruns.actors.settings import ActorSettings
from rayruns.actors.spec import RunSpec
from rayruns.providers.settings import ProviderSettings

TRANSITIONS_PER_RUN = 3  # created, running, terminal


def store_rate(runs: int, database: Database) -> dict[str, Any]:
    store = database.run_store("bench.registry_rate")
    frames = [LoggedFrame(n, "assistant_message", '{"content": "x"}') for n in range(1, 6)]
    outcome = Outcome(stop_reason="end_turn", usage=Usage())
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    c0, t0 = time.process_time(), time.perf_counter()
    for n in range(runs):
        run = Run(id=f"{prefix}-{n}", status="created", model="fake/echo", created_at=utcnow())
        store.insert(run, "actor")
        store.set_running(run.model_copy(update={"status": "running"}))
        done = run.model_copy(
            update={
                "status": outcome.status,
                "stop_reason": "end_turn",
                "usage": Usage(),
                "completed_at": utcnow(),
            }
        )
        store.finish(done, frames, 3600, [])
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    store.close()
    return {
        "runs": runs,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "transitions_per_cpu_s": round(runs * TRANSITIONS_PER_RUN / cpu),
        "transitions_per_s": round(runs * TRANSITIONS_PER_RUN / wall),
    }


async def one_level(
    client: RegistryClient, proc: psutil.Process, runs: int, concurrency: int
) -> dict[str, Any]:
    spec = RunSpec(messages=[{"role": "user", "content": "x"}], provider_options={"text": "x"})
    todo = iter(range(runs))

    async def worker() -> None:
        for _ in todo:
            run, _actor = await client.create_run(spec)
            await client.wait_terminal(run.id)

    cpu0, t0 = proc.cpu_times(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu1 = proc.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {
        "concurrency": concurrency,
        "runs": runs,
        "runs_per_s": round(runs / wall, 1),
        "registry_cpu_pct": round(cpu / wall * 100, 1),
        "registry_cpu_ms_per_run": round(cpu / runs * 1000, 2),
        "transitions_per_registry_cpu_s": round(runs * TRANSITIONS_PER_RUN / cpu),
    }


async def registry_rate(runs: int, levels: list[int]) -> list[dict[str, Any]]:
    settings = ActorSettings(
        namespace="rayruns-registry-rate",
        registry_name="rayruns-registry-rate",
        db_path=Path(tempfile.mkdtemp()) / "runs.sqlite3",
        pool_size=max(levels),
    )
    init_ray("local", settings)
    try:
        client = RegistryClient.connect(settings, ProviderSettings())
        client.wait_ready()
        proc = psutil.Process(int((await client.stats())["pid"]))
        # Warm: the pool filled, every actor process started and used once.
        await one_level(client, proc, max(levels) * 2, max(levels))
        return [await one_level(client, proc, runs, c) for c in levels]
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--levels", default="8,32,96")
    parser.add_argument("--db-url", default=None, help="also measure the PostgreSQL store here")
    parser.add_argument("--store-only", action="store_true", help="skip the registry levels")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    sqlite = SqliteDatabase(Path(tempfile.mkdtemp()) / "runs.sqlite3")
    result: dict[str, Any] = {
        "cpus": psutil.cpu_count(),
        "load_avg_at_start": [round(x, 1) for x in psutil.getloadavg()],
        "store": store_rate(args.runs * 3, sqlite),
    }
    if args.db_url:
        result["store_postgres"] = store_rate(args.runs * 3, PostgresDatabase(args.db_url))
    if not args.store_only:
        result["registry"] = asyncio.run(registry_rate(args.runs, levels))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
