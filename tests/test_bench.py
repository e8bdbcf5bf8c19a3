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

from bench import loadgen, report, run
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
        "burst": await loadgen.burst(target, {"n": 5}),
        "cancel": await loadgen.cancel(target, {"n": 2, "warmup": 0}),
        "cancel_upstream": await loadgen.cancel_upstream(target, {"n": 1, "wire_port": wire_port}),
        "http_runs": await loadgen.http_runs(target, {"n": 5, "concurrency": 2}),
    }
    spec = {"duration_s": 1.0, "warmup_s": 0.1, "drain_s": 5}
    points = {}
    for k in (1, 20):
        point = await loadgen.streams(target, {"streams": k, **spec})
        assert point["frames_in_window"] > 0 and point["streams_failed"] == 0, point
        assert point["frames_scheduled"] >= point["frames_in_window"]
        point["ok"] = run.point_ok(point)
        point["ok_every_stream"] = run.every_stream_ok(point)
        points[str(k)] = point
    raw["streams"] = points
    raw["search"] = run.search_max(lambda k: points[str(k)], points, 0)
    assert raw["cancel_upstream"]["cancel_to_upstream_close_ms"]["n"] == 1
    assert all(raw[s]["failures"] == 0 for s in ("start", "burst", "cancel", "cancel_upstream"))
    assert raw["burst"]["first_frame_ms"]["n"] == 5

    memory = {f"{p}": 50.0 for p in ("bare", *report.VENDORS)}
    ours = {
        **raw,
        "idle": {"uss_mb_median": 50.0},
        "memory": {"uss_mb": memory, "uss_mb_max": 50.0},
        "batch": {"runs_per_s": 100.0, "failures": 0},
        "disconnect": {"disconnect_to_cancelled_ms": {"p50": 5.0, "p99": 9.0}, "failures": 0},
    }
    configs = {"defaults": run.CONFIGS["defaults"], "tuned": run.CONFIGS["tuned"]}
    results = report.results(
        {"defaults": ours, "tuned": ours, "baseline": raw}, configs, quick=True
    )
    for name in configs:
        summary = results[name]
        for key, *_ in report.TARGETS:
            assert report.lookup(summary, key) is not None, key
        assert set(summary["frame_latency_p99_ms"]) == {"1", "20"}
        assert None not in summary["targets_met"].values()
    assert results["baseline"]["cancel_to_done_ms_p99"] is not None
    table = report.markdown(results)
    assert "at p99 ≤ 250 ms |" in table and "| 20 |" in table
    assert run.CONFIGS["defaults"].label in table and run.CONFIGS["tuned"].label in table


def test_a_failed_sample_fails_its_target_and_shows() -> None:
    summary = {
        "cancel_to_done_ms_p99": 5.0,
        "batch_runs_per_s": 500.0,
        "failures": {"cancel": 1, "batch": 0},
    }
    met = report.targets_met(summary)
    assert met["cancel_to_done_ms_p99"] is False
    assert met["batch_runs_per_s"] is True
    summary["targets_met"] = met
    assert "(1 failed)" in report._cell(summary, {}, "cancel_to_done_ms_p99", "cancel")


def test_an_undelivered_frame_counts_as_late_from_its_scheduled_time() -> None:
    state = loadgen._StreamState(latencies=[5.0, 5.0], last_stamp=100.04)
    # A 0.2 s window of 20 ms frames from 100.0: 11 scheduled, two delivered (100.02, 100.04).
    window = (100.0, 100.2)
    assert len(loadgen.scheduled_in(window, 100.04, 0.02)) == 11
    latencies, missing = loadgen.stream_latencies(state, window, 0.02, gave_up=110.0)
    assert missing == 8  # 100.06 … 100.20
    assert len(latencies) == 10
    assert max(latencies) == pytest.approx((110.0 - 100.06) * 1000)
    assert min(latencies[2:]) == pytest.approx((110.0 - 100.2) * 1000)
