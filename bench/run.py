"""`make bench`: rayruns and a no-Ray baseline, side by side, driven by one load generator.

    python -m bench.run            # the full run (~6-8 min): writes bench/results.json and .md
    python -m bench.run --quick    # a short smoke run (~1-2 min), written elsewhere by default

The baseline is measured first, alone; then a Ray head, `rayruns serve` joined to it, and the
same scenarios again, plus the batch API and the idle actor's memory. Every measurement is made
by a separate process (`bench.loadgen` for HTTP, `bench.driver` for Ray's Python API) that
reports its own CPU. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.procs import Servers

BENCH_DIR = Path(__file__).resolve().parent
POINTS = [1, 20, 100, 300]  # the stream counts results.json reports
GRID = [40, 60, 80]  # more points, for the largest count within the p99 limit
P99_LIMIT_MS = 250.0
MIN_RATE = 0.85  # a point counts only if ≥85% of the nominal 50 frames/s per stream arrived

# Environment of every Ray process, set before Ray starts (see the README for the numbers):
# direct ingress (the ingress replica serves HTTP itself, no proxy hop), user code and router
# on the replica's main loop.
RAY_ENV: dict[str, str] = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# rayruns settings for the bench: the warm pool covers the batch's concurrency.
RAYRUNS_ENV: dict[str, str] = {
    "RAYRUNS_NAMESPACE": "rayruns-bench",
    "RAYRUNS_POOL_SIZE": "16",
}

# (key, target, direction): "le" = at most, "ge" = at least.
TARGETS: list[tuple[str, float, str]] = [
    ("start_overhead_ms_p50", 25, "le"),
    ("frame_latency_p99_ms.20", 50, "le"),
    ("max_streams_at_p99_250ms", 100, "ge"),
    ("cancel_to_done_ms_p99", 50, "le"),
    ("cancel_to_upstream_close_ms_p99", 100, "le"),
    ("idle_actor_uss_mb", 60, "le"),
    ("batch_runs_per_s", 100, "ge"),
]


@dataclass(frozen=True)
class Plan:
    points: list[int]
    duration_s: float
    warmup_s: float
    start_n: int
    cancel_n: int
    upstream_n: int
    batch_n: int
    batch_concurrency: int
    http_runs_n: int
    search_steps: int
    scenarios: tuple[str, ...] = ("start", "cancel", "streams", "http_runs", "idle", "batch")
    no_skip: bool = False

    @classmethod
    def full(cls) -> Plan:
        return cls(sorted(POINTS + GRID), 8.0, 2.0, 60, 100, 40, 1000, 16, 500, 0)

    @classmethod
    def quick(cls) -> Plan:
        return cls([1, 20], 2.0, 1.0, 15, 20, 5, 100, 16, 100, 0)


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def tool(module: str, spec: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    """Run `python -m module <spec>` in its own process; its last JSON line is the result."""
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(spec)],
        cwd=BENCH_DIR.parent,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={
            **os.environ,
            **RAYRUNS_ENV,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
        },
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} {spec.get('scenario')} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def wait_quiet(base_url: str, timeout_s: float = 120) -> None:
    """Until the server has no run in flight (rayruns: by its run list; baseline: a pause)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy: list[Any] = []
        try:
            for status in ("created", "running"):
                response = httpx.get(
                    f"{base_url}/v1/runs", params={"status": status, "limit": 1000}, timeout=10
                )
                if response.status_code != 200:  # the baseline keeps no run list
                    time.sleep(1)
                    return
                busy += response.json()
        except (httpx.HTTPError, ValueError):
            time.sleep(1)
            return
        if not busy:
            time.sleep(0.5)
            return
        time.sleep(0.5)
    log(f"warning: runs still in flight at {base_url} after {timeout_s}s")


def skip_reason(k: int, points: dict[str, Any], *, guard: bool) -> str | None:
    """Above 100 streams, don't pile a 3× larger load on a server already far past the limit;
    never start more run actors than free memory holds (each ~60 MB, its own process)."""
    if not guard:
        return None
    below = [p for p in points.values() if p["streams"] < k and not p.get("skipped")]
    if below and k > 100:
        prev = max(below, key=lambda p: p["streams"])
        p99 = prev["latency_ms"].get("p99")
        if p99 is None or p99 > 4 * P99_LIMIT_MS:
            return (
                f"at {prev['streams']} streams p99 was already {p99} ms (> 4 × the limit); "
                f"{k} streams would only need {k} actor processes to show a collapse"
            )
    need_gb = (k - max((p["streams"] for p in below), default=0)) * 0.065 + 3
    free_gb = psutil.virtual_memory().available / 2**30
    if free_gb < need_gb:
        return f"{free_gb:.1f} GB free, {need_gb:.1f} GB wanted for {k} run actors"
    return None


def point_ok(point: dict[str, Any]) -> bool:
    """The issue's criterion: p99 within the limit, and every stream served to the end."""
    p99 = point["latency_ms"]["p99"]
    return (
        p99 is not None
        and p99 <= P99_LIMIT_MS
        and point["streams_failed"] == 0
        and point["streams_not_drained"] == 0
    )


def full_rate(point: dict[str, Any]) -> bool:
    """Stricter: the streams also kept ≥ 85 % of their 50 frames/s. A CPU-starved run actor
    produces its frames late and fewer, and latency counted from creation does not show it."""
    rate = point["frames_in_window"] / max(1, point["frames_expected_approx"])
    return point_ok(point) and rate >= MIN_RATE


def measure(
    name: str,
    base_url: str,
    plan: Plan,
    server_pids: list[int],
    wire_port: int,
    before_streams: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The HTTP scenarios against one server; the stream counts last and in ascending order
    (so that no measurement shares the machine with the spare actors of a larger one)."""

    def loadgen(scenario: str, **spec: Any) -> dict[str, Any]:
        wait_quiet(base_url)
        log(f"{name}: {scenario} {spec.get('streams', '')}")
        spec = {"scenario": scenario, "base_url": base_url, "server_pids": server_pids, **spec}
        result = tool("bench.loadgen", spec)
        log(f"{name}: {scenario} -> {_brief(result)}")
        return result

    out: dict[str, Any] = {}
    if "start" in plan.scenarios:
        out["start"] = loadgen("start", n=plan.start_n)
    if "cancel" in plan.scenarios:
        out["cancel"] = loadgen("cancel", n=plan.cancel_n)
        out["cancel_upstream"] = loadgen("cancel_upstream", n=plan.upstream_n, wire_port=wire_port)
    points: dict[str, Any] = {}

    def stream_point(k: int) -> dict[str, Any]:
        reason = skip_reason(k, points, guard=name != "baseline" and not plan.no_skip)
        if reason is not None:
            log(f"{name}: streams {k} skipped: {reason}")
            result: dict[str, Any] = {"streams": k, "skipped": reason, "latency_ms": {}}
        else:
            result = loadgen(
                "streams", streams=k, duration_s=plan.duration_s, warmup_s=plan.warmup_s
            )
        result["ok"] = reason is None and point_ok(result)
        result["ok_full_rate"] = reason is None and full_rate(result)
        points[str(k)] = result
        return result

    if before_streams is not None:
        wait_quiet(base_url)
        before_streams(out)
    if "http_runs" in plan.scenarios:
        out["http_runs"] = loadgen(
            "http_runs", n=plan.http_runs_n, concurrency=plan.batch_concurrency
        )
    if "streams" in plan.scenarios:
        for k in sorted(plan.points):
            stream_point(k)
        out["search"] = search_max(stream_point, points, plan.search_steps)
        out["streams"] = dict(sorted(points.items(), key=lambda kv: int(kv[0])))
    return out


def search_max(
    stream_point: Callable[[int], dict[str, Any]], points: dict[str, Any], steps: int
) -> dict[str, Any]:
    """Bisect between the largest passing and the smallest failing stream count."""
    for _ in range(steps):
        passing = [int(k) for k, v in points.items() if v["ok"]]
        failing = [int(k) for k, v in points.items() if not v["ok"]]
        lo = max(passing, default=0)
        hi = min((f for f in failing if f > lo), default=None)
        if hi is None or hi - lo <= max(10, lo // 5):
            break
        stream_point((lo + hi) // 2 // 10 * 10 or (lo + hi) // 2)
    passing = [int(k) for k, v in points.items() if v["ok"]]
    failing = [int(k) for k, v in points.items() if not v["ok"]]
    best = max(passing, default=0)
    bound = min((f for f in failing if f > best), default=None)
    full = max((int(k) for k, v in points.items() if v.get("ok_full_rate")), default=0)
    return {
        "max_ok": best,
        "first_failing_above": bound,
        "max_ok_full_rate": full,
        "tried": sorted(map(int, points)),
    }


def summarize(raw: dict[str, Any], *, with_ray: bool) -> dict[str, Any]:
    """The issue's keys, from the raw measurements (None where a scenario was skipped)."""
    streams: dict[str, Any] = raw.get("streams", {})

    def get(key: str) -> Any:
        return _lookup(raw, key)

    out: dict[str, Any] = {
        "start_overhead_ms_p50": get("start.start_ms.p50"),
        "frame_latency_p50_ms": {k: v["latency_ms"].get("p50") for k, v in streams.items()},
        "frame_latency_p99_ms": {k: v["latency_ms"].get("p99") for k, v in streams.items()},
        "max_streams_at_p99_250ms": get("search.max_ok"),
        "max_streams_at_p99_250ms_full_rate": get("search.max_ok_full_rate"),
        "cancel_to_done_ms_p50": get("cancel.cancel_to_done_ms.p50"),
        "cancel_to_done_ms_p99": get("cancel.cancel_to_done_ms.p99"),
        "cancel_to_upstream_close_ms_p99": _finite(
            get("cancel_upstream.cancel_to_upstream_close_ms.p99")
        ),
        "http_runs_per_s": get("http_runs.runs_per_s"),
    }
    if with_ray:
        out["idle_actor_uss_mb"] = get("idle.uss_mb_median")
        out["batch_runs_per_s"] = get("batch.runs_per_s")
    return out


def _json_safe(value: Any) -> Any:
    """Infinity (e.g. an upstream connection never seen closing) is not JSON: null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _finite(value: float | None) -> float | None:
    return None if value is None or value == float("inf") else value


def _brief(result: dict[str, Any]) -> str:
    keys = ("start_ms", "latency_ms", "cancel_to_done_ms", "cancel_to_upstream_close_ms")
    parts = [f"{k} p50={result[k]['p50']} p99={result[k]['p99']}" for k in keys if k in result]
    for k in ("runs_per_s", "uss_mb_median", "ramp_s", "loadgen_cpu_pct", "server_cpu_pct"):
        if k in result:
            parts.append(f"{k}={result[k]}")
    return ", ".join(parts)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ray

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "ray": ray.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _lookup(results: dict[str, Any], key: str) -> Any:
    value: Any = results
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def targets_met(results: dict[str, Any]) -> dict[str, bool | None]:
    met: dict[str, bool | None] = {}
    for key, target, direction in TARGETS:
        value = _lookup(results, key)
        if value is None:
            met[key] = None
        else:
            met[key] = value <= target if direction == "le" else value >= target
    return met


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    base = results.get("baseline", {})
    met = results["targets_met"]
    target_of = {k: (t, d) for k, t, d in TARGETS}

    def fmt(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
        return str(value)

    def row(label: str, key: str, unit: str) -> str:
        target = target_of.get(key)
        goal = "" if target is None else f"{'≤' if target[1] == 'le' else '≥'} {target[0]}"
        ok = met.get(key)
        mark = "" if ok is None else (" ✅" if ok else " ❌")
        ours, theirs = fmt(_lookup(results, key)), fmt(_lookup(base, key))
        if key.startswith("max_streams"):  # every measured count passed: a lower bound
            ours, theirs = (
                f"≥ {value}"
                if _lookup(details.get(who, {}), "search.first_failing_above") is None
                and value != "–"
                else value
                for who, value in (("rayruns", ours), ("baseline", theirs))
            )
        return f"| {label} | {unit} | {goal} | {ours}{mark} | {theirs} |"

    details = results["details"]
    rows = [
        "| metric | unit | target | rayruns | baseline (FastAPI, no Ray) |",
        "| --- | --- | --- | --- | --- |",
        row("start overhead p50 (POST → first content frame)", "start_overhead_ms_p50", "ms"),
        row("frame latency p99, 20 streams × 50 frames/s", "frame_latency_p99_ms.20", "ms"),
        row("max streams × 50 frames/s at p99 ≤ 250 ms", "max_streams_at_p99_250ms", "streams"),
        row(
            "… and ≥ 85 % of the 50 frames/s delivered (extra)",
            "max_streams_at_p99_250ms_full_rate",
            "streams",
        ),
        row("cancel → [DONE] p50", "cancel_to_done_ms_p50", "ms"),
        row("cancel → [DONE] p99", "cancel_to_done_ms_p99", "ms"),
        row("cancel → upstream closed p99 (OpenAI SDK)", "cancel_to_upstream_close_ms_p99", "ms"),
        row("idle pooled run actor, USS (median)", "idle_actor_uss_mb", "MB"),
        row("batch API, 1000 zero-delay runs", "batch_runs_per_s", "runs/s"),
        row("HTTP, zero-delay streamed runs (extra)", "http_runs_per_s", "runs/s"),
    ]
    ours_load = details["rayruns"].get("streams", {})
    base_load = details.get("baseline", {}).get("streams", {})
    stream_rows = [
        "| streams | rayruns p50 / p99 ms | frames delivered | server CPU % | load gen. CPU % "
        "| baseline p50 / p99 ms | baseline server CPU % | load gen. CPU % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes: list[str] = []

    def lat(point: dict[str, Any]) -> str:
        if not point:
            return "–"
        if point.get("skipped"):
            notes.append(f"{point['streams']} streams, rayruns: not run: {point['skipped']}.")
            return "not run¹"
        lm = point["latency_ms"]
        return f"{fmt(lm.get('p50'))} / {fmt(lm.get('p99'))}"

    for k in sorted(set(ours_load) | set(base_load), key=int):
        o, b = ours_load.get(k, {}), base_load.get(k, {})
        delivered = (
            f"{o['frames_in_window'] / max(1, o['frames_expected_approx']) * 100:.0f} %"
            if "frames_in_window" in o
            else "–"
        )
        stream_rows.append(
            f"| {k} | {lat(o)} | {delivered} | {fmt(o.get('server_cpu_pct'))} "
            f"| {fmt(o.get('loadgen_cpu_pct'))} | {lat(b)} | {fmt(b.get('server_cpu_pct'))} "
            f"| {fmt(b.get('loadgen_cpu_pct'))} |"
        )
    if notes:
        stream_rows += ["", *(f"¹ {n}" for n in notes)]
    config = results["config"]
    env = ", ".join(f"`{k}={v}`" for k, v in {**config["ray_env"], **config["rayruns_env"]}.items())
    return "\n".join(
        [
            "# rayruns benchmark",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, {m['os']}, "
            f"Python {m['python']}, Ray {m['ray']}; {m['date']}"
            + (" — **quick run**" if results["quick"] else "")
            + ".",
            f"Configuration: {env or 'defaults'}.",
            "",
            *rows,
            "",
            "Concurrent streams at 50 frames/s each: frame latency (frame created → parsed by "
            "the client), the share of the nominal 50 frames/s delivered, and CPU during the "
            f"window (100 % = one core; the machine has {m['cores']}):",
            "",
            *stream_rows,
            "",
            "How each number is measured: bench/README.md; every raw number: results.json.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=None, help="results.json path")
    parser.add_argument("--points", default=None, help="stream counts, e.g. 1,20,100")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    parser.add_argument(
        "--no-skip", action="store_true", help="measure every stream count, however saturated"
    )
    parser.add_argument(
        "--scenarios", default=None, help="a subset, e.g. streams,batch (the rest is skipped)"
    )
    parser.add_argument(
        "--ray-env", action="append", default=[], help="KEY=VALUE for every Ray process"
    )
    parser.add_argument("--env", action="append", default=[], help="RAYRUNS_KEY=VALUE")
    args = parser.parse_args(argv)

    plan = Plan.quick() if args.quick else Plan.full()
    if args.points:
        plan = Plan(**{**plan.__dict__, "points": [int(p) for p in args.points.split(",")]})
    if args.no_skip:
        plan = Plan(**{**plan.__dict__, "no_skip": True})
    if args.scenarios:
        plan = Plan(**{**plan.__dict__, "scenarios": tuple(args.scenarios.split(","))})
    ray_env = {**RAY_ENV, **dict(kv.split("=", 1) for kv in args.ray_env)}
    RAYRUNS_ENV.update(dict(kv.split("=", 1) for kv in args.env))
    default_out = BENCH_DIR / "results.json"
    if args.quick:
        default_out = Path(tempfile.gettempdir()) / "rayruns-bench-quick" / "results.json"
    out_path: Path = args.out or default_out
    out_path.parent.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="rayruns-bench-"))
    servers = Servers(work, ray_env, dict(RAYRUNS_ENV))
    details: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        if not args.skip_baseline:
            log(f"baseline on {servers.baseline_url} (logs in {work})")
            baseline = servers.start_baseline()
            details["baseline"] = measure(
                "baseline", servers.baseline_url, plan, [baseline.pid], servers.wire_port
            )
            baseline.stop()
            servers.procs.remove(baseline)
        log(f"ray head on {servers.ray_address}; rayruns on {servers.rayruns_url}")
        head = servers.start_ray()
        servers.start_rayruns()
        driver = {"address": servers.ray_address, "namespace": RAYRUNS_ENV["RAYRUNS_NAMESPACE"]}

        def ray_scenarios(out: dict[str, Any]) -> None:
            """After the start and cancel scenarios: the pooled actors' memory, the batch API."""
            if "idle" in plan.scenarios:
                out["idle"] = tool("bench.driver", {"scenario": "idle_uss", **driver})
                log(f"rayruns: idle actor USS -> {_brief(out['idle'])}")
            if "batch" in plan.scenarios:
                log("rayruns: batch API")
                spec = {"scenario": "batch", "n": plan.batch_n}
                spec["concurrency"] = plan.batch_concurrency
                out["batch"] = tool("bench.driver", spec | driver)
                log(f"rayruns: batch -> {_brief(out['batch'])}")

        details["rayruns"] = measure(
            "rayruns", servers.rayruns_url, plan, [head.pid], servers.wire_port, ray_scenarios
        )
    except BaseException:
        log(f"failed; the servers' logs are in {work}")
        raise
    finally:
        servers.stop()
    if not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)

    results: dict[str, Any] = summarize(details["rayruns"], with_ray=True)
    if "baseline" in details:
        results["baseline"] = summarize(details["baseline"], with_ray=False)
    results["targets_met"] = targets_met(results)
    results["quick"] = args.quick
    results["machine"] = machine()
    results["config"] = {
        "ray_env": ray_env,
        "rayruns_env": dict(RAYRUNS_ENV),
        "plan": plan.__dict__,
        "bench_minutes": round((time.monotonic() - t_start) / 60, 1),
    }
    results["details"] = details
    out_path.write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    out_path.with_suffix(".md").write_text(markdown(results))
    log(f"wrote {out_path} and {out_path.with_suffix('.md')}")
    print(out_path.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
