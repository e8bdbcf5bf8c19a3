"""The benchmark's plumbing on a very short run against its no-Ray baseline server: every
scenario produces its numbers, and results.json / results.md get every key. No timing asserted."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bench import loadgen, run
from bench.procs import free_port
from bench.sse_client import Target


@pytest.fixture(scope="module")
def baseline() -> Iterator[tuple[Target, int]]:
    port, wire_port = free_port(), free_port()
    env = {
        **os.environ,
        "RAYRUNS_OPENAI_API_KEY": "x",
        "RAYRUNS_OPENAI_BASE_URL": f"http://127.0.0.1:{wire_port}/v1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield Target("127.0.0.1", port), wire_port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_short_run_has_every_key(baseline: tuple[Target, int]) -> None:
    target, wire_port = baseline
    raw: dict[str, Any] = {
        "start": await loadgen.start_overhead(target, {"n": 3, "warmup": 1}),
        "cancel": await loadgen.cancel(target, {"n": 2, "warmup": 0}),
        "cancel_upstream": await loadgen.cancel_upstream(target, {"n": 1, "wire_port": wire_port}),
        "http_runs": await loadgen.http_runs(target, {"n": 5, "concurrency": 2}),
    }
    spec = {"duration_s": 0.4, "warmup_s": 0.1, "drain_s": 5}
    points = {}
    for k in (1, 20):
        point = await loadgen.streams(target, {"streams": k, **spec})
        assert point["frames_in_window"] > 0 and point["streams_failed"] == 0
        point["ok"] = run.point_ok(point)
        point["ok_full_rate"] = run.full_rate(point)
        points[str(k)] = point
    raw["streams"] = points
    raw["search"] = run.search_max(lambda k: points[str(k)], points, 0)
    assert raw["cancel_upstream"]["cancel_to_upstream_close_ms"]["n"] == 1

    ours = {**raw, "idle": {"uss_mb_median": 50.0}, "batch": {"runs_per_s": 100.0}}
    results: dict[str, Any] = run.summarize(ours, with_ray=True)
    results["baseline"] = run.summarize(raw, with_ray=False)
    results["targets_met"] = run.targets_met(results)
    for key in (
        "start_overhead_ms_p50",
        "frame_latency_p50_ms",
        "frame_latency_p99_ms",
        "max_streams_at_p99_250ms",
        "cancel_to_done_ms_p50",
        "cancel_to_done_ms_p99",
        "cancel_to_upstream_close_ms_p99",
        "idle_actor_uss_mb",
        "batch_runs_per_s",
    ):
        assert results[key] is not None, key
    assert set(results["frame_latency_p99_ms"]) == {"1", "20"}
    assert results["baseline"]["cancel_to_done_ms_p99"] is not None
    assert None not in results["targets_met"].values()

    results |= {"quick": True, "machine": run.machine(), "details": {"rayruns": ours}}
    results["config"] = {"ray_env": {}, "rayruns_env": {}}
    table = run.markdown(results)
    assert "at p99 ≤ 250 ms |" in table and "| 20 |" in table
