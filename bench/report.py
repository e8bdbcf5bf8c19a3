"""From the raw measurements to results.json's keys, the targets, and results.md's tables."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any, Protocol

import psutil

from bench.frame_cost import cpu_per_frame_ms, cpu_ratio

P99_LIMIT_MS = 250.0


class ConfigLike(Protocol):
    label: str
    ray_env: dict[str, str]
    rayruns_env: dict[str, str]


# (key, target, "le" = at most / "ge" = at least, the scenarios whose failures fail it).
TARGETS: list[tuple[str, float, str, tuple[str, ...]]] = [
    ("start_overhead_ms_p50", 25, "le", ("start",)),
    ("frame_latency_p99_ms.20", 50, "le", ("streams.20",)),
    ("max_streams_at_p99_250ms", 100, "ge", ()),
    ("burst60_first_frame_ms_p99", 3000, "le", ("burst",)),
    ("cancel_to_done_ms_p99", 50, "le", ("cancel",)),
    ("cancel_to_upstream_close_ms_p99", 100, "le", ("cancel_upstream",)),
    ("disconnect_to_cancelled_ms_p99", 1000, "le", ("disconnect",)),
    ("idle_actor_uss_mb_max", 60, "le", ()),
    ("batch_runs_per_s", 100, "ge", ("batch",)),
]

VENDORS = ("fake", "openai", "anthropic", "google")


def lookup(results: dict[str, Any], key: str) -> Any:
    value: Any = results
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def failures(raw: dict[str, Any]) -> dict[str, int]:
    """Failed samples per scenario; a stream count's failed or undrained streams as
    `streams.<k>`."""
    out: dict[str, int] = {}
    for name, result in raw.items():
        if isinstance(result, dict) and "failures" in result:
            out[name] = int(result["failures"])
    for k, point in raw.get("streams", {}).items():
        if not point.get("skipped"):
            out[f"streams.{k}"] = point["streams_failed"] + point["streams_not_drained"]
    return out


def summarize(raw: dict[str, Any], *, with_ray: bool) -> dict[str, Any]:
    """The headline keys from one server's raw measurements (None where not measured)."""
    streams: dict[str, Any] = raw.get("streams", {})

    def get(key: str) -> Any:
        return lookup(raw, key)

    out: dict[str, Any] = {
        "start_overhead_ms_p50": get("start.start_ms.p50"),
        "frame_latency_p50_ms": {k: v["latency_ms"].get("p50") for k, v in streams.items()},
        "frame_latency_p99_ms": {k: v["latency_ms"].get("p99") for k, v in streams.items()},
        "worst_stream_p99_ms": {k: v.get("worst_stream_p99_ms") for k, v in streams.items()},
        "max_streams_at_p99_250ms": get("search.max_ok"),
        "max_streams_at_p99_250ms_every_stream": get("search.max_ok_every_stream"),
        "burst60_first_frame_ms_p99": get("burst.first_frame_ms.p99"),
        "cancel_to_done_ms_p50": get("cancel.cancel_to_done_ms.p50"),
        "cancel_to_done_ms_p99": get("cancel.cancel_to_done_ms.p99"),
        "cancel_to_upstream_close_ms_p99": get("cancel_upstream.cancel_to_upstream_close_ms.p99"),
        "http_runs_per_s": get("http_runs.runs_per_s"),
        "cpu_per_frame_ms": cpu_per_frame_ms(raw),
        "failures": failures(raw),
    }
    if with_ray:
        by_provider = get("memory.uss_mb") or {}
        out |= {
            "disconnect_to_cancelled_ms_p50": get("disconnect.disconnect_to_cancelled_ms.p50"),
            "disconnect_to_cancelled_ms_p99": get("disconnect.disconnect_to_cancelled_ms.p99"),
            "idle_actor_uss_mb": {
                "pooled_median": get("idle.uss_mb_median"),
                **{f"after_{k}": v for k, v in by_provider.items()},
            },
            "idle_actor_uss_mb_max": get("memory.uss_mb_max"),
            "batch_runs_per_s": get("batch.runs_per_s"),
        }
    return out


def targets_met(summary: dict[str, Any]) -> dict[str, bool | None]:
    """Each target: met, missed, or None (not measured). A scenario with a failed sample
    misses its target whatever its numbers."""
    met: dict[str, bool | None] = {}
    failed = summary.get("failures", {})
    for key, target, direction, scenarios in TARGETS:
        value = lookup(summary, key)
        if any(failed.get(s, 0) for s in scenarios):
            met[key] = False
        elif value is None:
            met[key] = None
        else:
            met[key] = value <= target if direction == "le" else value >= target
    return met


def results(
    details: dict[str, Any], configs: dict[str, ConfigLike], *, quick: bool
) -> dict[str, Any]:
    """results.json: a summary and its targets per configuration, the baseline's summary, the
    machine, and every raw number under `details`."""
    out: dict[str, Any] = {}
    baseline_cpu = cpu_per_frame_ms(details.get("baseline", {}))
    for name in configs:
        summary = summarize(details[name], with_ray=True)
        summary["baseline_cpu_per_frame_ms"] = baseline_cpu
        summary["cpu_per_frame_ratio"] = cpu_ratio(summary["cpu_per_frame_ms"], baseline_cpu)
        summary["targets_met"] = targets_met(summary)
        out[name] = summary
    if "baseline" in details:
        out["baseline"] = summarize(details["baseline"], with_ray=False)
    out["quick"] = quick
    out["machine"] = machine()
    out["config"] = {
        name: {"label": c.label, "ray_env": c.ray_env, "rayruns_env": c.rayruns_env}
        for name, c in configs.items()
    }
    out["details"] = details
    return out


def json_safe(value: Any) -> Any:
    """Infinity and NaN are not JSON: null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


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


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


# (label, key, unit, the scenario whose failures the cell shows)
ROWS: list[tuple[str, str, str, str | None]] = [
    ("start overhead p50 (POST → first content frame)", "start_overhead_ms_p50", "ms", "start"),
    ("frame latency p99, 20 streams × 50 frames/s", "frame_latency_p99_ms.20", "ms", "streams.20"),
    ("… the worst single stream's p99 (extra)", "worst_stream_p99_ms.20", "ms", None),
    ("max streams × 50 frames/s at p99 ≤ 250 ms", "max_streams_at_p99_250ms", "streams", None),
    (
        "… with every stream's own p99 ≤ 250 ms (extra)",
        "max_streams_at_p99_250ms_every_stream",
        "streams",
        None,
    ),
    ("60 runs posted at once → first content p99", "burst60_first_frame_ms_p99", "ms", "burst"),
    ("cancel → [DONE] p50", "cancel_to_done_ms_p50", "ms", "cancel"),
    ("cancel → [DONE] p99", "cancel_to_done_ms_p99", "ms", "cancel"),
    (
        "cancel → upstream closed p99 (OpenAI SDK)",
        "cancel_to_upstream_close_ms_p99",
        "ms",
        "cancel_upstream",
    ),
    (
        "client leaves → run cancelled p50, beside 40 streams",
        "disconnect_to_cancelled_ms_p50",
        "ms",
        "disconnect",
    ),
    (
        "client leaves → run cancelled p99, beside 40 streams",
        "disconnect_to_cancelled_ms_p99",
        "ms",
        "disconnect",
    ),
    (
        "idle run actor USS, the largest after one run per provider",
        "idle_actor_uss_mb_max",
        "MB",
        None,
    ),
    *((f"… after a run through {p}", f"idle_actor_uss_mb.after_{p}", "MB", None) for p in VENDORS),
    ("… pooled actors after the fake runs (median)", "idle_actor_uss_mb.pooled_median", "MB", None),
    ("batch API, 1000 zero-delay runs", "batch_runs_per_s", "runs/s", "batch"),
    ("HTTP, zero-delay streamed runs (extra)", "http_runs_per_s", "runs/s", "http_runs"),
]


def _cell(summary: dict[str, Any], detail: dict[str, Any], key: str, scenario: str | None) -> str:
    if not summary:
        return "–"
    value = fmt(lookup(summary, key))
    every_count_passed = lookup(detail, "search.first_failing_above") is None
    if key.startswith("max_streams") and value != "–" and every_count_passed:
        value = f"≥ {value}"
    ok = summary.get("targets_met", {}).get(key)
    mark = "" if ok is None else (" ✅" if ok else " ❌")
    failed = summary.get("failures", {}).get(scenario, 0) if scenario else 0
    note = f" ({failed} failed)" if failed else ""
    return f"{value}{mark}{note}"


def _stream_table(name: str, detail: dict[str, Any], notes: list[str]) -> list[str]:
    rows = [
        "| streams | p50 / p99 ms | worst stream p99 ms | frames delivered | undelivered (late) "
        "| server CPU % | load gen. CPU % | rest of the machine CPU % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, p in detail.get("streams", {}).items():
        if p.get("skipped"):
            notes.append(f"{k} streams, {name}: not run: {p['skipped']}.")
            rows.append(f"| {k} | not run¹ | | | | | | |")
            continue
        lm = p["latency_ms"]
        scheduled = max(1, p.get("frames_scheduled", 0))
        failed = p["streams_failed"] + p["streams_not_drained"]
        rows.append(
            f"| {k} | {fmt(lm.get('p50'))} / {fmt(lm.get('p99'))} "
            f"| {fmt(p.get('worst_stream_p99_ms'))} "
            f"| {p['frames_in_window'] / scheduled * 100:.0f} % "
            f"| {p.get('frames_undelivered', 0)}"
            + (f", {failed} streams failed" if failed else "")
            + f" | {fmt(p.get('server_cpu_pct'))} | {fmt(p.get('loadgen_cpu_pct'))} "
            f"| {fmt(p.get('other_cpu_pct'))} |"
        )
    return rows


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    configs: dict[str, Any] = res["config"]
    names = [n for n in configs if n in res]
    details = res["details"]
    target_of = {k: (t, d) for k, t, d, _ in TARGETS}
    head = ["metric", "unit", "target", *(configs[n]["label"] for n in names)]
    head.append("baseline (FastAPI, no Ray¹)")
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, key, unit, scenario in ROWS:
        target = target_of.get(key)
        goal = "" if target is None else f"{'≤' if target[1] == 'le' else '≥'} {target[0]}"
        cells = [_cell(res[n], details.get(n, {}), key, scenario) for n in names]
        cells.append(_cell(res.get("baseline", {}), details.get("baseline", {}), key, scenario))
        rows.append(f"| {label} | {unit} | {goal} | " + " | ".join(cells) + " |")
    notes: list[str] = []
    sections: list[str] = []
    for name in [*names, "baseline"]:
        if name not in details:
            continue
        label = configs[name]["label"] if name in configs else "baseline (FastAPI, no Ray)"
        sections += [
            f"**{label}**",
            "",
            *_stream_table(name, details[name], notes),
            "",
        ]
    return "\n".join(
        [
            "# rayruns benchmark",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, {m['os']}, "
            f"Python {m['python']}, Ray {m['ray']}; {m['date']}"
            + (" — **quick run**" if res["quick"] else "")
            + ".",
            "",
            *rows,
            "",
            "¹ The baseline serves the same runs in one process with the same pump, frame log "
            "and SSE encoding, and skips the registry, the SQLite store, conversation locks, "
            "the actor reset and ping frames besides Ray: the gap is the price of Ray *and* "
            "of that bookkeeping. A cell with “(n failed)” missed its target whatever its "
            "number.",
            "",
            "Concurrent streams at 50 frames/s each. Latency = parsed by the client − the "
            "frame's scheduled time (start + n × 20 ms); every frame scheduled in the window "
            "counts, one never delivered as late by the time the client gave up. CPU during "
            f"the window (100 % = one core; the machine has {m['cores']}); “rest of the "
            "machine” is everything else that ran meanwhile (a shared machine).",
            "",
            *sections,
            *(f"¹ {n}" for n in notes),
            "",
            "How each number is measured: bench/README.md; every raw number: results.json.",
            "",
        ]
    )
