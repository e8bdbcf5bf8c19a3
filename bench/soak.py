"""`make soak`: N minutes of mixed traffic against a fresh `rayruns serve`, watching for leaks.

    python -m bench.soak [--minutes 10] [--workers 6] [--out bench/soak_results.json]

Starts its own Ray head and `rayruns serve` (bench/procs.py) and drives, from this process,
streamed and background runs, cancels, client disconnects, resumes with `Last-Event-ID`, chat
completions through the `openai` SDK, non-streamed runs and provider failures (the fake provider's
`fail` knob). Every stream is checked: ids consecutive across a resume, `[DONE]` last.

Meanwhile each server process (the CLI, the Serve replica, the registry, the run actors, Serve's
controller and proxy, Ray's own) is sampled: RSS, USS, open file descriptors. At the end, once the
traffic stops: runs not terminal, run actors beyond the pool, and growth from the first third of
the samples to the last, per process kind. Writes JSON and prints a table; exits 1 on a leak
(a run not terminal, an actor beyond the pool, a long-lived process whose USS or descriptors
grew past the limits, or whose USS still climbs after the first third), 2 if the traffic itself
saw errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from httpx_sse import aconnect_sse
from openai import AsyncOpenAI

from bench.procs import Servers

BENCH_DIR = Path(__file__).resolve().parent
POOL_SIZE = 4
TERMINAL = {"completed", "failed", "cancelled"}
# Long-lived processes: their memory and descriptors must stay flat. Ray's GCS and raylet too:
# what every run's calls leave there (task events, actor records) would pile up.
LONG_LIVED = ("server", "replica", "registry", "serve_controller", "serve_proxy", "gcs", "raylet")
# Run actors come and go (spares end when idle), so theirs is checked per process: pooled
# actors serve run after run and must not grow with them.
MAX_RUN_ACTOR_GROWTH_PCT = 20.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- traffic ---------------------------------------------------------------------------------


class StreamBroken(AssertionError):
    pass


@dataclass
class Tally:
    """What each scenario did: counts, and the first few errors of each kind."""

    ok: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    run_ids: set[str] = field(default_factory=set)
    # Seconds from a foreground client's departure to its run's `cancelled` record (polled
    # every 0.2 s).
    departure_to_cancelled_s: list[float] = field(default_factory=list)

    def error(self, scenario: str, exc: BaseException) -> None:
        self.failed[scenario] += 1
        if len(self.examples[scenario]) < 3:
            self.examples[scenario].append(f"{type(exc).__name__}: {str(exc)[:300]}")


def body(text: str, **kw: Any) -> dict[str, Any]:
    options = kw.pop("provider_options", {})
    return {
        "messages": [{"role": "user", "content": text}],
        "provider_options": {"delay_s": 0.01, **options},
        **kw,
    }


WORDS = " ".join(f"w{i}" for i in range(60))


async def read_frames(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    seen: list[int],
    stop_after: int | None = None,
    tally: Tally | None = None,
    **kw: Any,
) -> tuple[str, bool]:
    """Reads an SSE answer, appending logged seq_ids to `seen`; returns (run id, got [DONE]).
    With `stop_after`, leaves after that many logged frames (a client going away)."""
    async with aconnect_sse(client, method, url, **kw) as source:
        response = source.response
        if response.status_code != 200:
            await response.aread()
            raise StreamBroken(f"{method} {url}: HTTP {response.status_code} {response.text[:200]}")
        run_id = response.headers["x-run-id"]
        if tally is not None:
            tally.run_ids.add(run_id)
        taken = 0
        async for sse in source.aiter_sse():
            if sse.data == "[DONE]":
                return run_id, True
            frame = json.loads(sse.data)
            if frame.get("message_type") == "ping":
                continue
            if sse.id:
                if int(sse.id) != frame["seq_id"]:
                    raise StreamBroken(f"id {sse.id} != seq_id {frame['seq_id']}")
                seen.append(frame["seq_id"])
                taken += 1
            if stop_after is not None and taken >= stop_after:
                return run_id, False
    return run_id, False


def whole_stream(seen: list[int], done: bool, missing_done: str) -> None:
    """The stream ended with `[DONE]` and its ids are consecutive."""
    if not done:
        raise StreamBroken(missing_done)
    consecutive(seen)


def consecutive(seen: list[int]) -> None:
    if seen != list(range(1, len(seen) + 1)):
        raise StreamBroken(f"seq_ids not 1..n without gap or duplicate: {seen[:5]}…{seen[-5:]}")


async def wait_status(client: httpx.AsyncClient, run_id: str, timeout_s: float = 60) -> str:
    """The run's status once terminal (a departed client's cancel lands asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = (await client.get(f"/v1/runs/{run_id}")).json()
        if run["status"] in TERMINAL or time.monotonic() > deadline:
            return str(run["status"])
        await asyncio.sleep(0.2)


async def streamed(client: httpx.AsyncClient, tally: Tally) -> None:
    seen: list[int] = []
    _, done = await read_frames(
        client, "POST", "/v1/runs", json=body(WORDS), seen=seen, tally=tally
    )
    whole_stream(seen, done, "no [DONE]")


async def resumed(client: httpx.AsyncClient, tally: Tally) -> None:
    """A background run's client leaves mid-stream and comes back with Last-Event-ID."""
    seen: list[int] = []
    run_id, _ = await read_frames(
        client,
        "POST",
        "/v1/runs",
        json=body(WORDS, background=True),
        seen=seen,
        stop_after=random.randint(1, 20),
        tally=tally,
    )
    headers = {"Last-Event-ID": str(seen[-1])}
    _, done = await read_frames(
        client, "GET", f"/v1/runs/{run_id}/stream", seen=seen, headers=headers
    )
    whole_stream(seen, done, "resumed stream without [DONE]")
    status = await wait_status(client, run_id)
    if status != "completed":
        raise StreamBroken(f"background run {status}, not completed")


async def cancelled(client: httpx.AsyncClient, tally: Tally) -> None:
    """A hanging background run, cancelled by another request; its stream ends."""
    seen: list[int] = []
    run_id, _ = await read_frames(
        client,
        "POST",
        "/v1/runs",
        json=body(WORDS, background=True, provider_options={"hang_after": 3}),
        seen=seen,
        stop_after=1,
        tally=tally,
    )
    answer = await client.post(f"/v1/runs/{run_id}/cancel")
    if answer.status_code != 200 or answer.json()["status"] != "cancelled":
        raise StreamBroken(f"cancel: {answer.status_code} {answer.text[:200]}")
    _, done = await read_frames(
        client, "GET", f"/v1/runs/{run_id}/stream", seen=seen, params={"starting_after": seen[-1]}
    )
    whole_stream(seen, done, "cancelled run's stream without [DONE]")


async def disconnected(client: httpx.AsyncClient, tally: Tally) -> None:
    """A foreground run whose client leaves: the server cancels it. The run stalls after a few
    chunks, so it cannot end by itself however late the cancel lands; how late is recorded."""
    seen: list[int] = []
    run_id, _ = await read_frames(
        client,
        "POST",
        "/v1/runs",
        json=body(WORDS, provider_options={"delay_s": 0.05, "hang_after": 8}),
        seen=seen,
        stop_after=random.randint(1, 5),
        tally=tally,
    )
    left = time.monotonic()
    status = await wait_status(client, run_id)
    if status != "cancelled":
        raise StreamBroken(f"a departed client's foreground run is {status}")
    tally.departure_to_cancelled_s.append(time.monotonic() - left)


async def provider_failure(client: httpx.AsyncClient, tally: Tally) -> None:
    kind = random.choice(["timeout", "rate_limit", "auth", "bad_request", "error"])
    seen: list[int] = []
    options = {"fail": kind, "fail_after": random.randint(0, 10)}
    run_id, done = await read_frames(
        client, "POST", "/v1/runs", json=body(WORDS, provider_options=options), seen=seen,
        tally=tally,
    )  # fmt: skip
    whole_stream(seen, done, "failed run's stream without [DONE]")
    status = await wait_status(client, run_id)
    if status != "failed":
        raise StreamBroken(f"a provider failure left the run {status}")


async def collected(client: httpx.AsyncClient, tally: Tally) -> None:
    answer = await client.post("/v1/runs", json=body("alpha beta gamma", stream=False))
    if answer.status_code != 200 or answer.json()["run"]["status"] != "completed":
        raise StreamBroken(f"stream=false: {answer.status_code} {answer.text[:200]}")
    tally.run_ids.add(answer.json()["run"]["id"])


async def chat(openai: AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "one two three four five"}]
    extra = {"provider_options": {"delay_s": 0.01}}
    if random.random() < 0.5:
        completion = await openai.chat.completions.create(
            model="fake/echo", messages=messages, extra_body=extra
        )
        if completion.choices[0].message.content != "one two three four five":
            raise StreamBroken(f"chat answer {completion.choices[0].message.content!r}")
        return
    stream = await openai.chat.completions.create(
        model="fake/echo",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    text, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    if "".join(text) != "one two three four five" or usage is None:
        raise StreamBroken(f"chat stream {''.join(text)!r}, usage {usage}")


async def chat_left(openai: AsyncOpenAI) -> None:
    """A streamed completion whose client stops reading after one chunk."""
    stream = await openai.chat.completions.create(
        model="fake/echo",
        messages=[{"role": "user", "content": WORDS}],
        stream=True,
        extra_body={"provider_options": {"delay_s": 0.05}},
    )
    async for _ in stream:
        break
    await stream.close()


Scenario = Callable[[httpx.AsyncClient, AsyncOpenAI, Tally], Awaitable[None]]
SCENARIOS: dict[str, tuple[float, Scenario]] = {
    "streamed": (3, lambda c, _o, t: streamed(c, t)),
    "resumed": (3, lambda c, _o, t: resumed(c, t)),
    "cancelled": (2, lambda c, _o, t: cancelled(c, t)),
    "disconnected": (2, lambda c, _o, t: disconnected(c, t)),
    "provider_failure": (2, lambda c, _o, t: provider_failure(c, t)),
    "collected": (1, lambda c, _o, t: collected(c, t)),
    "chat": (2, lambda _c, o, _t: chat(o)),
    "chat_left": (1, lambda _c, o, _t: chat_left(o)),
}


async def worker(base_url: str, until: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    names = list(SCENARIOS)
    weights = [SCENARIOS[n][0] for n in names]
    timeout = httpx.Timeout(60.0)
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=timeout) as client,
        AsyncOpenAI(base_url=f"{base_url}/v1", api_key="soak", max_retries=0) as openai,
    ):
        while time.monotonic() < until:
            name = rng.choices(names, weights)[0]
            try:
                await SCENARIOS[name][1](client, openai, tally)
                tally.ok[name] += 1
            except Exception as exc:
                tally.error(name, exc)


# --- processes -------------------------------------------------------------------------------


def kind_of(proc: psutil.Process, server_pid: int) -> str:
    if proc.pid == server_pid:
        return "server"
    cmd = " ".join(proc.cmdline()[:3])
    for needle, kind in (
        ("RunsIngress", "replica"),
        ("ray::RunRegistry", "registry"),
        ("ray::RunActor", "run_actor"),
        ("ServeController", "serve_controller"),
        ("ProxyActor", "serve_proxy"),
        ("gcs_server", "gcs"),
        ("raylet", "raylet"),
    ):
        if needle in cmd:
            return kind
    return "ray_other"


def sample(roots: list[int], server_pid: int) -> list[dict[str, Any]]:
    """Every process under the roots: kind, pid, RSS and USS in MiB, open descriptors."""
    out = []
    procs: list[psutil.Process] = []
    for root in roots:
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(root)
            procs += [top, *top.children(recursive=True)]
    for proc in procs:
        try:
            with proc.oneshot():
                memory = proc.memory_full_info()
                out.append(
                    {
                        "kind": kind_of(proc, server_pid),
                        "pid": proc.pid,
                        "rss_mb": round(memory.rss / 2**20, 1),
                        "uss_mb": round(memory.uss / 2**20, 1),
                        "fds": proc.num_fds(),
                    }
                )
        except psutil.Error:
            continue  # ended between the listing and the sample
    return out


async def sampler(
    roots: list[int], server_pid: int, every_s: float, stop: asyncio.Event, out: list[Any]
) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        procs = await asyncio.to_thread(sample, roots, server_pid)
        out.append({"t_s": round(time.monotonic() - t0, 1), "procs": procs})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def by_kind(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per kind, per sample: process count and summed RSS, USS, descriptors."""
    kinds = sorted({p["kind"] for s in samples for p in s["procs"]})
    series: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for s in samples:
        for kind in kinds:
            mine = [p for p in s["procs"] if p["kind"] == kind]
            series[kind].append(
                {
                    "t_s": s["t_s"],
                    "count": len(mine),
                    "rss_mb": round(sum(p["rss_mb"] for p in mine), 1),
                    "uss_mb": round(sum(p["uss_mb"] for p in mine), 1),
                    "fds": sum(p["fds"] for p in mine),
                }
            )
    return series


def growth(points: list[dict[str, float]]) -> dict[str, Any]:
    """Mean of the first third of the samples and of the last third, and the change; and the
    USS trend over the last two thirds (after the warm-up), in MiB per minute."""
    third = max(1, len(points) // 3)
    out: dict[str, Any] = {}
    tail = points[third:]
    if len(tail) >= 3 and len({p["t_s"] for p in tail}) > 1:
        trend = statistics.linear_regression(
            [p["t_s"] / 60 for p in tail], [p["uss_mb"] for p in tail]
        )
        out["uss_mb_per_min"] = round(trend.slope, 2)
    for metric in ("count", "rss_mb", "uss_mb", "fds"):
        first = statistics.mean(p[metric] for p in points[:third])
        last = statistics.mean(p[metric] for p in points[-third:])
        out[metric] = {
            "first": round(first, 1),
            "last": round(last, 1),
            "growth": round(last - first, 1),
            "growth_pct": round((last - first) / first * 100, 1) if first else None,
        }
    return out


# --- after the traffic -----------------------------------------------------------------------


async def not_terminal(base_url: str, timeout_s: float) -> list[dict[str, Any]]:
    """Runs still `created` or `running` once every client is gone (polled: a departed
    client's cancel and a cancelled actor's end land asynchronously)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        while True:
            live: list[dict[str, Any]] = []
            for status in ("created", "running"):
                answer = await client.get("/v1/runs", params={"status": status, "limit": 1000})
                live += answer.json()
            if not live or time.monotonic() > deadline:
                return live
            await asyncio.sleep(1)


async def settled_actors(roots: list[int], server_pid: int, timeout_s: float) -> int:
    """Run actor processes once spares are trimmed (`RAYRUNS_POOL_IDLE_S` here is short)."""
    deadline = time.monotonic() + timeout_s
    while True:
        procs = await asyncio.to_thread(sample, roots, server_pid)
        count = sum(p["kind"] == "run_actor" for p in procs)
        if count <= POOL_SIZE or time.monotonic() > deadline:
            return count
        await asyncio.sleep(1)


async def soak(servers: Servers, args: argparse.Namespace) -> dict[str, Any]:
    roots = [p.pid for p in servers.procs]
    server_pid = servers.procs[-1].pid
    base_url = servers.rayruns_url
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    watch = asyncio.create_task(sampler(roots, server_pid, args.sample_s, stop, samples))
    tally = Tally()
    load0 = os.getloadavg()
    until = time.monotonic() + args.minutes * 60
    log(f"traffic for {args.minutes} min, {args.workers} clients, against {base_url}")
    await asyncio.gather(*(worker(base_url, until, tally, i) for i in range(args.workers)))
    load1 = os.getloadavg()
    log("traffic done; waiting for runs to end and spare actors to go")
    live = await not_terminal(base_url, timeout_s=90)
    actors = await settled_actors(roots, server_pid, timeout_s=120)
    stop.set()
    await watch
    # Samples while traffic ran: the settling tail would make everything look like it shrank.
    during = [s for s in samples if s["t_s"] <= args.minutes * 60]
    series = by_kind(during)
    growths = {kind: growth(points) for kind, points in series.items()}
    leaks = leak_findings(growths, live, actors, args)
    return {
        "minutes": args.minutes,
        "env": args.env,
        "workers": args.workers,
        "load_avg_start": [round(x, 1) for x in load0],
        "load_avg_end": [round(x, 1) for x in load1],
        "cpu_count": os.cpu_count(),
        "scenarios": {
            name: {"ok": tally.ok[name], "failed": tally.failed[name]} for name in SCENARIOS
        },
        "error_examples": dict(tally.examples),
        "runs_started_seen": len(tally.run_ids),
        "departure_to_cancelled_s": spread(tally.departure_to_cancelled_s),
        "not_terminal_runs": [r["id"] for r in live],
        "run_actors_after": actors,
        "pool_size": POOL_SIZE,
        "leaked_actors": max(0, actors - POOL_SIZE),
        "growth_first_to_last_third": growths,
        "leaks": leaks,
        "samples": series,
        "last_sample": samples[-1]["procs"] if samples else [],
    }


def spread(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max": round(ordered[-1], 2),
    }


def leak_findings(
    growths: dict[str, Any], live: list[Any], actors: int, args: argparse.Namespace
) -> list[str]:
    found = []
    if live:
        found.append(f"{len(live)} runs not terminal")
    if actors > POOL_SIZE:
        found.append(f"{actors - POOL_SIZE} run actors beyond the pool of {POOL_SIZE}")
    for kind in LONG_LIVED:
        g = growths.get(kind)
        if g is None:
            continue
        uss = g["uss_mb"]
        if uss["growth"] > args.max_uss_growth_mb and (uss["growth_pct"] or 0) > 20:
            found.append(f"{kind} USS grew {uss['first']} → {uss['last']} MiB")
        slope = g.get("uss_mb_per_min")
        if slope is not None and slope > args.max_uss_slope:
            found.append(f"{kind} USS still growing after the warm-up: {slope} MiB/min")
        if g["fds"]["growth"] > args.max_fd_growth:
            found.append(f"{kind} descriptors grew {g['fds']['first']} → {g['fds']['last']}")
    actors_growth = growths.get("run_actor")
    if (
        actors_growth is not None
        and actors_growth["count"]["first"]
        and actors_growth["count"]["last"]
    ):
        first, last = (
            actors_growth["uss_mb"][end] / actors_growth["count"][end] for end in ("first", "last")
        )
        if (last - first) / first * 100 > MAX_RUN_ACTOR_GROWTH_PCT:
            found.append(f"a run actor's USS grew {first:.1f} → {last:.1f} MiB on average")
    return found


def table(result: dict[str, Any]) -> str:
    lines = [
        f"soak: {result['minutes']} min, {result['workers']} clients, load average "
        f"{result['load_avg_start'][0]} → {result['load_avg_end'][0]} on {result['cpu_count']} "
        "cores",
        "",
        f"{'scenario':<18}{'ok':>7}{'failed':>8}",
    ]
    for name, counts in result["scenarios"].items():
        lines.append(f"{name:<18}{counts['ok']:>7}{counts['failed']:>8}")
    lines += [
        "",
        f"{'process kind':<18}{'n':>9}{'RSS MiB':>17}{'USS MiB':>17}{'fds':>13}{'USS MiB/min':>13}",
    ]
    for kind, g in result["growth_first_to_last_third"].items():

        def pair(metric: str, g: dict[str, Any] = g) -> str:
            return f"{g[metric]['first']:g}→{g[metric]['last']:g}"

        lines.append(
            f"{kind:<18}{pair('count'):>9}{pair('rss_mb'):>17}{pair('uss_mb'):>17}"
            f"{pair('fds'):>13}{g.get('uss_mb_per_min', ''):>13}"
        )
    d = result["departure_to_cancelled_s"]
    lines += [
        "",
        f"foreground client gone → run cancelled: p50 {d['p50']} s, p99 {d['p99']} s, "
        f"max {d['max']} s (n={d['n']})",
        f"runs not terminal: {len(result['not_terminal_runs'])}; run actors after: "
        f"{result['run_actors_after']} (pool {result['pool_size']}); leaks: "
        f"{'; '.join(result['leaks']) or 'none'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=6, help="concurrent clients")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--max-uss-growth-mb", type=float, default=32.0)
    parser.add_argument("--max-uss-slope", type=float, default=1.0, help="MiB per minute")
    parser.add_argument("--max-fd-growth", type=float, default=32.0)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "soak_results.json")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        help="KEY=VALUE for every Ray process (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rayruns-soak-") as tmp:
        servers = Servers(
            Path(tmp),
            dict(kv.split("=", 1) for kv in args.env),
            {
                "RAYRUNS_NAMESPACE": "rayruns-soak",
                "RAYRUNS_POOL_SIZE": str(POOL_SIZE),
                # Spare actors end soon after the traffic, so that what stays is the pool.
                "RAYRUNS_POOL_IDLE_S": "5",
                "RAYRUNS_PING_INTERVAL_S": "1",
            },
        )
        try:
            log("starting a Ray head and rayruns serve")
            servers.start_ray()
            servers.start_rayruns()
            result = asyncio.run(soak(servers, args))
        finally:
            servers.stop()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    log(f"wrote {args.out}")
    if result["leaks"]:
        return 1
    return 2 if any(c["failed"] for c in result["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
