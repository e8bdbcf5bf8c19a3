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
import json
import os
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

from bench import report
from bench.procs import Servers
from bench.report import P99_LIMIT_MS

BENCH_DIR = Path(__file__).resolve().parent
POINTS = [1, 20, 100, 300]  # the stream counts results.json reports
GRID = [40, 60, 80, 150, 200]  # more points, for the largest count within the p99 limit


@dataclass(frozen=True)
class Config:
    """One way to run rayruns: the environment of every Ray process (set before Ray starts)
    and rayruns' own settings."""

    label: str
    ray_env: dict[str, str]
    rayruns_env: dict[str, str]


# What `make run` gives a user (`rayruns serve`, every setting at its default: Serve's proxy,
# a warm pool of 4), and the configuration tuned on this machine (bench/README.md): direct
# ingress (the ingress replica serves HTTP itself, no proxy hop, user code and router on the
# replica's main loop) and a warm pool covering the batch's concurrency.
CONFIGS: dict[str, Config] = {
    "defaults": Config(
        "`make run` defaults (Serve proxy, pool of 4)", {}, {"RAYRUNS_NAMESPACE": "rayruns-bench"}
    ),
    "tuned": Config(
        "tuned (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`, pool of 16)",
        {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
        {"RAYRUNS_NAMESPACE": "rayruns-bench", "RAYRUNS_POOL_SIZE": "16"},
    ),
}


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
    disconnect_n: int
    disconnect_streams: int = 40
    burst_n: int = 60
    scenarios: tuple[str, ...] = (
        "start",
        "burst",
        "cancel",
        "disconnect",
        "streams",
        "http_runs",
        "idle",
        "memory",
        "batch",
    )
    no_skip: bool = False

    @classmethod
    def full(cls) -> Plan:
        return cls(sorted(POINTS + GRID), 8.0, 2.0, 60, 100, 40, 1000, 16, 500, 0, 100)

    @classmethod
    def quick(cls) -> Plan:
        return cls([1, 20], 2.0, 1.0, 15, 20, 5, 100, 16, 100, 0, 10, 10)


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def tool(
    module: str, spec: dict[str, Any], env: dict[str, str], timeout_s: float = 900
) -> dict[str, Any]:
    """Run `python -m module <spec>` in its own process; its last JSON line is the result."""
    proc = subprocess.run(
        [sys.executable, "-m", module, json.dumps(spec)],
        cwd=BENCH_DIR.parent,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={
            **os.environ,
            **env,
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
    """The target's criterion: p99 within the limit (every frame scheduled in the window
    counted, an undelivered one as late), and every stream served to the end."""
    p99 = point["latency_ms"]["p99"]
    return (
        p99 is not None
        and p99 <= P99_LIMIT_MS
        and point["streams_failed"] == 0
        and point["streams_not_drained"] == 0
    )


def every_stream_ok(point: dict[str, Any]) -> bool:
    """Stricter: the worst stream's own p99 is within the limit too (the pooled p99 weights a
    starved stream by the few frames it got through)."""
    worst = point.get("worst_stream_p99_ms")
    return point_ok(point) and worst is not None and worst <= P99_LIMIT_MS


def measure(
    name: str,
    base_url: str,
    plan: Plan,
    server_pids: list[int],
    wire_port: int,
    env: dict[str, str],
    before_streams: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The HTTP scenarios against one server; the stream counts last and in ascending order
    (so that no measurement shares the machine with the spare actors of a larger one)."""

    def loadgen(scenario: str, **spec: Any) -> dict[str, Any]:
        wait_quiet(base_url)
        log(f"{name}: {scenario} {spec.get('streams', '')}")
        spec = {"scenario": scenario, "base_url": base_url, "server_pids": server_pids, **spec}
        result = tool("bench.loadgen", spec, env)
        log(f"{name}: {scenario} -> {brief(result)}")
        return result

    out: dict[str, Any] = {}
    if "start" in plan.scenarios:
        out["start"] = loadgen("start", n=plan.start_n)
    if "burst" in plan.scenarios:
        out["burst"] = loadgen("burst", n=plan.burst_n)
    if "cancel" in plan.scenarios:
        out["cancel"] = loadgen("cancel", n=plan.cancel_n)
        out["cancel_upstream"] = loadgen("cancel_upstream", n=plan.upstream_n, wire_port=wire_port)
    if "disconnect" in plan.scenarios and name != "baseline":  # it has no GET …/stream
        out["disconnect"] = loadgen(
            "disconnect", n=plan.disconnect_n, streams=plan.disconnect_streams
        )
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
        result["ok_every_stream"] = reason is None and every_stream_ok(result)
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
    every = max((int(k) for k, v in points.items() if v.get("ok_every_stream")), default=0)
    return {
        "max_ok": best,
        "first_failing_above": bound,
        "max_ok_every_stream": every,
        "tried": sorted(map(int, points)),
    }


def measure_rayruns(work: Path, config: Config, plan: Plan) -> dict[str, Any]:
    """A Ray head with `config`'s environment, `rayruns serve` joined to it, every scenario."""
    work.mkdir(parents=True, exist_ok=True)
    servers = Servers(work, config.ray_env, config.rayruns_env)
    env = {**config.ray_env, **config.rayruns_env}
    try:
        log(f"{config.label}: ray head on {servers.ray_address}; rayruns on {servers.rayruns_url}")
        head = servers.start_ray()
        servers.start_rayruns()
        driver = {
            "address": servers.ray_address,
            "namespace": config.rayruns_env["RAYRUNS_NAMESPACE"],
        }

        def ray_scenarios(out: dict[str, Any]) -> None:
            """After the start and cancel scenarios: the actors' memory, the batch API."""
            if "idle" in plan.scenarios:
                out["idle"] = tool("bench.driver", {"scenario": "idle_uss", **driver}, env)
                log(f"rayruns: idle actor USS -> {brief(out['idle'])}")
            if "memory" in plan.scenarios:
                spec = {"scenario": "idle_uss_by_provider", **driver}
                out["memory"] = tool("bench.driver", spec, env)
                log(f"rayruns: idle actor USS by provider -> {out['memory']['uss_mb']}")
            if "batch" in plan.scenarios:
                log("rayruns: batch API")
                spec = {"scenario": "batch", "n": plan.batch_n}
                spec["concurrency"] = plan.batch_concurrency
                out["batch"] = tool("bench.driver", spec | driver, env)
                log(f"rayruns: batch -> {brief(out['batch'])}")

        return measure(
            "rayruns",
            servers.rayruns_url,
            plan,
            [head.pid],
            servers.wire_port,
            env,
            ray_scenarios,
        )
    except BaseException:
        log(f"failed; the servers' logs are in {work}")
        raise
    finally:
        servers.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--out", type=Path, default=None, help="results.json path")
    parser.add_argument("--points", default=None, help="stream counts, e.g. 1,20,100")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"a subset of {','.join(CONFIGS)}"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    parser.add_argument(
        "--no-skip", action="store_true", help="measure every stream count, however saturated"
    )
    parser.add_argument(
        "--scenarios", default=None, help="a subset, e.g. streams,batch (the rest is skipped)"
    )
    parser.add_argument(
        "--ray-env", action="append", default=[], help="KEY=VALUE for every Ray process (tuned)"
    )
    parser.add_argument("--env", action="append", default=[], help="RAYRUNS_KEY=VALUE (tuned)")
    args = parser.parse_args(argv)

    plan = Plan.quick() if args.quick else Plan.full()
    if args.points:
        plan = Plan(**{**plan.__dict__, "points": [int(p) for p in args.points.split(",")]})
    if args.no_skip:
        plan = Plan(**{**plan.__dict__, "no_skip": True})
    if args.scenarios:
        plan = Plan(**{**plan.__dict__, "scenarios": tuple(args.scenarios.split(","))})
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    if "tuned" in configs:
        tuned = configs["tuned"]
        configs["tuned"] = Config(
            tuned.label,
            {**tuned.ray_env, **dict(kv.split("=", 1) for kv in args.ray_env)},
            {**tuned.rayruns_env, **dict(kv.split("=", 1) for kv in args.env)},
        )
    default_out = BENCH_DIR / "results.json"
    if args.quick:
        default_out = Path(tempfile.gettempdir()) / "rayruns-bench-quick" / "results.json"
    out_path: Path = args.out or default_out
    out_path.parent.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="rayruns-bench-"))
    details: dict[str, Any] = {}
    t_start = time.monotonic()
    if not args.skip_baseline:
        servers = Servers(work, {}, {})
        try:
            log(f"baseline on {servers.baseline_url} (logs in {work})")
            baseline = servers.start_baseline()
            details["baseline"] = measure(
                "baseline", servers.baseline_url, plan, [baseline.pid], servers.wire_port, {}
            )
        finally:
            servers.stop()
    for name, config in configs.items():
        details[name] = measure_rayruns(work / name, config, plan)
    if not args.keep_logs:
        shutil.rmtree(work, ignore_errors=True)

    results = report.results(details, configs, quick=args.quick)
    results["config"]["plan"] = plan.__dict__
    results["config"]["bench_minutes"] = round((time.monotonic() - t_start) / 60, 1)
    out_path.write_text(json.dumps(report.json_safe(results), indent=2) + "\n")
    out_path.with_suffix(".md").write_text(report.markdown(results))
    log(f"wrote {out_path} and {out_path.with_suffix('.md')}")
    print(out_path.with_suffix(".md").read_text())
    return 0


def brief(result: dict[str, Any]) -> str:
    keys = (
        "start_ms",
        "latency_ms",
        "cancel_to_done_ms",
        "cancel_to_upstream_close_ms",
        "disconnect_to_cancelled_ms",
    )
    parts = [f"{k} p50={result[k]['p50']} p99={result[k]['p99']}" for k in keys if k in result]
    for k in (
        "worst_stream_p99_ms",
        "frames_undelivered",
        "failures",
        "runs_per_s",
        "uss_mb_median",
        "ramp_s",
        "loadgen_cpu_pct",
        "server_cpu_pct",
    ):
        if k in result:
            parts.append(f"{k}={result[k]}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
