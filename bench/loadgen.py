"""The load generator: one process, uvloop, raw asyncio HTTP; reports its own CPU.

    python -m bench.loadgen '{"scenario": "streams", "base_url": "http://127.0.0.1:8000", ...}'

prints one JSON object: the scenario's numbers, plus `loadgen_cpu_pct` (this process, user+system,
over the measured window; 100 = one core) and, when `server_pids` is given, the server's CPU over
the same window broken down by process name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.sse_client import Response, Target, open_request, request_json
from bench.stats import percentile, round_ms, summary

CONTENT = ("assistant_message", "reasoning_message")
FRAME_INTERVAL_S = 0.02  # 50 frames/s per stream


def _body(text: str, **options: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "bench"}],
        "provider_options": {"text": text, **options},
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuWindow:
    """This process's CPU, and the servers' (by process name), between `start` and `stop`."""

    def __init__(self, server_pids: list[int]) -> None:
        self._server_pids = server_pids
        self._t0 = self._c0 = 0.0
        self._s0: dict[int, tuple[str, float]] = {}
        self._m0 = 0.0
        self.result: dict[str, Any] = {}

    def _server_cpu(self) -> dict[int, tuple[str, float]]:
        import psutil

        out: dict[int, tuple[str, float]] = {}
        for root in self._server_pids:
            try:
                procs = [psutil.Process(root)]
                procs += procs[0].children(recursive=True)
            except psutil.Error:
                continue
            for p in procs:
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        out[p.pid] = (_proc_name(p), t.user + t.system)
                except psutil.Error:
                    pass
        return out

    def start(self) -> None:
        self._s0 = self._server_cpu()
        self._m0 = _machine_busy_s()
        self._t0, self._c0 = time.perf_counter(), _cpu_s()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._t0
        own = (_cpu_s() - self._c0) / wall * 100
        s1 = self._server_cpu()
        by_name: dict[str, float] = {}
        for pid, (name, cpu) in s1.items():
            before = self._s0.get(pid, (name, 0.0))[1]
            by_name[name] = by_name.get(name, 0.0) + (cpu - before) / wall * 100
        top = dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:8])
        machine = (_machine_busy_s() - self._m0) / wall * 100
        server = sum(by_name.values())
        self.result = {
            "window_s": round(wall, 2),
            "loadgen_cpu_pct": round(own, 1),
            "server_cpu_pct": round(server, 1),
            # Everything else the machine did meanwhile (other users of a shared machine).
            "other_cpu_pct": round(max(0.0, machine - server - own), 1)
            if self._server_pids
            else None,
            "server_cpu_by_process": {k: round(v, 1) for k, v in top.items()},
        }
        return self.result


def _server_tree(server_pids: list[int]) -> set[int]:
    import psutil

    pids: set[int] = set()
    for root in server_pids:
        try:
            proc = psutil.Process(root)
            pids.add(root)
            pids.update(c.pid for c in proc.children(recursive=True))
        except psutil.Error:
            pass
    return pids


async def settle(server_pids: list[int], quiet_s: float = 2.0, timeout_s: float = 90.0) -> float:
    """Wait until no server process has started or ended for `quiet_s` (a warm pool refilling
    after a ramp, spare actors being trimmed); returns the seconds waited."""
    t0 = time.monotonic()
    if not server_pids:
        return 0.0
    last: set[int] = set()
    since = t0
    while time.monotonic() - t0 < timeout_s:
        pids = _server_tree(server_pids)
        now = time.monotonic()
        if pids != last:
            last, since = pids, now
        elif now - since >= quiet_s:
            break
        await asyncio.sleep(0.25)
    return round(time.monotonic() - t0, 1)


def _machine_busy_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _proc_name(p: Any) -> str:
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        name: str = cmd[0].split(".", 1)[0].split(":", 3)[-1] or cmd[0]
        return "ray::" + name.replace("ray::", "")
    return str(p.name())


class Failures:
    """Samples that did not complete: counted and reported, never averaged in or dropped."""

    def __init__(self) -> None:
        self.count = 0
        self.errors: list[str] = []

    def add(self, exc: BaseException | str) -> None:
        self.count += 1
        if len(self.errors) < 3:
            self.errors.append(exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}")

    def json(self) -> dict[str, Any]:
        return {"failures": self.count, "failure_examples": self.errors}


# --- scenarios -----------------------------------------------------------------------------


async def _first_content_at(target: Target) -> float:
    """Post a zero-delay run and read it to `[DONE]`: when its first content frame was parsed."""
    response = await open_request(target, "POST", "/v1/runs", _body("alpha beta gamma"))
    first: float | None = None
    async for _, data in response.events():
        content = data.startswith("{") and json.loads(data).get("message_type") in CONTENT
        if first is None and content:
            first = time.perf_counter()
        if data == "[DONE]":
            break
    response.close()
    if first is None:
        raise RuntimeError(f"HTTP {response.status}: no content frame")
    return first


async def start_overhead(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """POST → first content frame parsed, zero-delay fake, one run after another."""
    n, warmup = int(spec.get("n", 60)), int(spec.get("warmup", 5))
    samples: list[float] = []
    failures = Failures()
    settled_s = await settle(spec.get("server_pids", []))
    cpu = CpuWindow(spec.get("server_pids", []))
    for i in range(warmup + n):
        if i == warmup:
            cpu.start()
        try:
            t0 = time.perf_counter()
            first = await _first_content_at(target)
        except Exception as exc:
            failures.add(exc)
            continue
        if i >= warmup:
            samples.append((first - t0) * 1000)
    return {"start_ms": summary(samples), "settled_s": settled_s, **failures.json(), **cpu.stop()}


async def burst(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """`n` runs posted at once on a quiet server: the burst's start → each run's first content
    frame. What a pool of warm actors buys, and what the runs beyond it pay (new processes)."""
    n = int(spec.get("n", 60))
    failures = Failures()
    settled_s = await settle(spec.get("server_pids", []))
    cpu = CpuWindow(spec.get("server_pids", []))

    async def one() -> float | None:
        try:
            return await _first_content_at(target)
        except Exception as exc:
            failures.add(exc)
            return None

    cpu.start()
    t0 = time.perf_counter()
    firsts = await asyncio.gather(*(one() for _ in range(n)))
    samples = [(f - t0) * 1000 for f in firsts if f is not None]
    return {
        "n": n,
        "first_frame_ms": summary(samples),
        "settled_s": settled_s,
        **failures.json(),
        **cpu.stop(),
    }


@dataclass
class _StreamState:
    latencies: list[float] = field(default_factory=list)
    first_frame: float | None = None
    last_stamp: float | None = None  # the latest scheduled time seen (frames arrive in order)
    past_window: bool = False
    error: str | None = None
    frames: int = 0


def scheduled_in(window: tuple[float, float], ref: float | None, interval: float) -> list[float]:
    """The scheduled times inside `window` of a stream whose frames fall on the grid through
    `ref` (any stamp of it); without one, a grid through the window's start."""
    t0, t1 = window
    base = t0 if ref is None else ref
    first = math.ceil((t0 - base) / interval - 1e-6)
    last = math.floor((t1 - base) / interval + 1e-6)
    return [base + j * interval for j in range(first, last + 1)]


def stream_latencies(
    state: _StreamState, window: tuple[float, float], interval: float, gave_up: float
) -> tuple[list[float], int]:
    """A stream's latencies in ms, every frame scheduled in the window counted: a frame never
    delivered is late by at least `gave_up` (when the client stopped waiting) − its scheduled
    time. Frames arrive in order, so the missing ones are those after the last stamp seen."""
    after = state.last_stamp if state.last_stamp is not None else -math.inf
    missing = [
        s for s in scheduled_in(window, state.last_stamp, interval) if s > after + interval / 2
    ]
    return state.latencies + [(gave_up - s) * 1000 for s in missing], len(missing)


async def streams(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """K concurrent 50 frames/s streams; latency = client parse time − the frame's scheduled time.

    The fake stamps each frame with the time it was due (start + n × delay, the way a vendor
    sends tokens whether or not the actor keeps up). Streams start staggered with random phase;
    the window opens `warmup_s` after every stream has delivered a frame, lasts `duration_s`;
    every frame scheduled inside it counts, however late it arrives (up to `drain_s` after the
    window), and a frame that never arrives counts as late by the time the client gave up.
    """
    k = int(spec["streams"])
    duration, warmup = float(spec.get("duration_s", 8)), float(spec.get("warmup_s", 2))
    ramp_timeout, drain = float(spec.get("ramp_timeout_s", 180)), float(spec.get("drain_s", 20))
    stagger, settle_max = float(spec.get("stagger_s", 0.01)), 90.0
    total_s = k * stagger + ramp_timeout + settle_max + warmup + duration + drain
    chunks = int(total_s / FRAME_INTERVAL_S)
    # One character a chunk: the run's text stays under the 16 KiB `provider_options` cap.
    body = _body("x" * chunks, chunk="char", delay_s=FRAME_INTERVAL_S, stamp=True)
    window: list[float] = []  # [t0, t1] once known (time.time())
    states = [_StreamState() for _ in range(k)]
    all_started = asyncio.Event()
    started = 0

    def count_started() -> None:
        nonlocal started
        started += 1
        if started == k:
            all_started.set()

    async def one(i: int) -> None:
        state = states[i]
        await asyncio.sleep(i * stagger + random.uniform(0, FRAME_INTERVAL_S))
        response: Response | None = None
        try:
            response = await open_request(target, "POST", "/v1/runs", body)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
            loads, now = json.loads, time.time
            async for _, data in response.events():
                if data == "[DONE]":
                    break
                frame = loads(data)
                if frame["message_type"] != "assistant_message":
                    continue
                t = now()
                stamp = float(frame["content"])
                state.frames += 1
                state.last_stamp = stamp
                if state.first_frame is None:
                    state.first_frame = t
                    count_started()
                if window:
                    if stamp > window[1]:
                        state.past_window = True
                        break
                    if stamp >= window[0]:
                        state.latencies.append((t - stamp) * 1000)
            if not state.past_window:
                raise RuntimeError("the stream ended before the window did")
        except Exception as exc:
            state.error = f"{type(exc).__name__}: {exc}"
            if state.first_frame is None:
                count_started()
        finally:
            if response is not None:
                response.close()

    tasks = [asyncio.ensure_future(one(i)) for i in range(k)]
    ramp_start = time.time()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_started.wait(), ramp_timeout)
    ramp_s = time.time() - ramp_start
    # Actors started for the ramp make the pool refill: measure once that is over.
    settled_s = await settle(spec.get("server_pids", []), timeout_s=settle_max)
    await asyncio.sleep(warmup)
    t0 = time.time()
    window.extend([t0, t0 + duration])
    cpu = CpuWindow(spec.get("server_pids", []))
    cpu.start()
    await asyncio.sleep(duration)
    cpu_result = cpu.stop()
    _, pending = await asyncio.wait(tasks, timeout=drain)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    gave_up = time.time()
    latencies: list[float] = []
    per_stream_p99: list[float] = []
    undelivered = delivered = 0
    for state in states:
        mine, missing = stream_latencies(state, (t0, t0 + duration), FRAME_INTERVAL_S, gave_up)
        latencies += mine
        undelivered += missing
        delivered += len(state.latencies)
        p99 = percentile(mine, 99)
        if p99 is not None:
            per_stream_p99.append(p99)
    errors = [s.error for s in states if s.error]
    stalled = sum(1 for s in states if not s.past_window and not s.error)
    return {
        "streams": k,
        "ramp_s": round(ramp_s, 2),
        "settled_s": settled_s,
        "latency_ms": summary(latencies),
        "worst_stream_p99_ms": round(max(per_stream_p99), 2) if per_stream_p99 else None,
        "median_stream_p99_ms": round_ms(percentile(per_stream_p99, 50)),
        "frames_scheduled": len(latencies),
        "frames_in_window": delivered,
        "frames_undelivered": undelivered,
        "frames_per_s": round(delivered / duration, 1),
        "streams_failed": len(errors),
        "streams_not_drained": stalled,
        "errors": errors[:3],
        **cpu_result,
    }


async def _cancel_one(
    target: Target,
    body: dict[str, Any],
    frames_before: int,
    on_cancel: Callable[[float], None] | None = None,
) -> tuple[float, float]:
    """(cancel sent → [DONE] parsed, cancel sent → cancel answered), in ms."""
    response = await open_request(target, "POST", "/v1/runs", body)
    run_id = response.headers["x-run-id"]
    seen = 0
    done = asyncio.get_running_loop().create_future()
    answered: list[float] = []
    t0 = 0.0

    async def cancel() -> None:
        await request_json(target, "POST", f"/v1/runs/{run_id}/cancel")
        answered.append(time.perf_counter())

    cancel_task: asyncio.Task[None] | None = None
    async for _, data in response.events():
        if data == "[DONE]":
            done.set_result(time.perf_counter())
            break
        if json.loads(data).get("message_type") in CONTENT:
            seen += 1
            if seen == frames_before:
                t0 = time.perf_counter()
                if on_cancel is not None:
                    on_cancel(time.monotonic())
                cancel_task = asyncio.ensure_future(cancel())
    response.close()
    if cancel_task is None:
        raise RuntimeError("the run ended before it could be cancelled")
    await cancel_task
    return (done.result() - t0) * 1000, (answered[0] - t0) * 1000


async def cancel(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """Cancel a streaming run after 3 frames, one run at a time; half mid-stream (50 frames/s),
    half with the provider hung (awaiting the network)."""
    n, concurrency = int(spec.get("n", 100)), int(spec.get("concurrency", 1))
    warmup = int(spec.get("warmup", 8))
    gate = asyncio.Semaphore(concurrency)
    flowing = _body("x " * 2000, delay_s=FRAME_INTERVAL_S)
    hung = _body("x " * 2000, hang_after=3)
    failures = Failures()

    async def sample(i: int) -> tuple[float, float] | None:
        async with gate:
            try:
                return await _cancel_one(target, flowing if i % 2 else hung, 3)
            except Exception as exc:
                failures.add(exc)
                return None

    await asyncio.gather(*(sample(i) for i in range(warmup)))
    failures = Failures()
    settled_s = await settle(spec.get("server_pids", []))
    cpu = CpuWindow(spec.get("server_pids", []))
    cpu.start()
    results = [r for r in await asyncio.gather(*(sample(i) for i in range(n))) if r is not None]
    return {
        "cancel_to_done_ms": summary([r[0] for r in results]),
        "cancel_answered_ms": summary([r[1] for r in results]),
        "settled_s": settled_s,
        **failures.json(),
        **cpu.stop(),
    }


async def cancel_upstream(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """OpenAI provider against the local wire server: cancel sent → upstream connection closed.
    A connection not seen closing within 5 s is a failure, not a sample."""
    from tests.providers.wire_servers import start_wire_server

    server = start_wire_server(port=int(spec["wire_port"]))
    n = int(spec.get("n", 40))
    body = {
        "model": "openai/stall-5",
        "messages": [{"role": "user", "content": "bench"}],
    }
    to_close: list[float] = []
    to_done: list[float] = []
    failures = Failures()
    try:
        await _cancel_one(target, body, 5)  # warmup: the actor loads the SDK
        await settle(spec.get("server_pids", []))
        for _ in range(n):
            sent: list[float] = []
            try:
                done_ms, _ = await _cancel_one(target, body, 5, sent.append)
            except Exception as exc:
                failures.add(exc)
                continue
            to_done.append(done_ms)
            request = server.recorder.last_request("stall-5")
            conn = request.connection
            closed = await asyncio.to_thread(conn.closed.wait, 5.0)
            if not closed or conn.closed_at is None:
                failures.add("the upstream connection was still open 5 s after the cancel")
            else:
                to_close.append((conn.closed_at - sent[0]) * 1000)
    finally:
        server.stop()
    return {
        "cancel_to_upstream_close_ms": summary(to_close),
        "cancel_to_done_ms": summary(to_done),
        **failures.json(),
    }


async def _drain(response: Response) -> None:
    async for _ in response.chunks():
        pass


async def _disconnect_one(target: Target, body: dict[str, Any]) -> float:
    """A foreground run whose client leaves after 3 content frames: ms from closing the
    connection to the `stop_reason` frame, read by a second client that joined the run."""
    response = await open_request(target, "POST", "/v1/runs", body)
    if response.status != 200:
        raise RuntimeError(f"POST /v1/runs: HTTP {response.status}")
    run_id = response.headers["x-run-id"]
    seen = last_seq = 0
    events = response.events()
    async for _, data in events:
        frame = json.loads(data)
        if frame.get("message_type") in CONTENT:
            seen, last_seq = seen + 1, frame["seq_id"]
            if seen == 3:
                break
    else:
        raise RuntimeError("the run ended before the client could leave")
    watch = await open_request(
        target, "GET", f"/v1/runs/{run_id}/stream?include_pings=false&starting_after={last_seq}"
    )
    try:
        if watch.status != 200:
            raise RuntimeError(f"GET /v1/runs/{{id}}/stream: HTTP {watch.status}")
        await events.aclose()
        t0 = time.perf_counter()
        await response.aclose()
        async for _, data in watch.events():
            if data.startswith("{") and '"stop_reason"' in data:
                frame = json.loads(data)
                if frame.get("message_type") != "stop_reason":
                    continue
                if frame["stop_reason"] != "cancelled":
                    raise RuntimeError(f"the run ended {frame['stop_reason']!r}, not cancelled")
                return (time.perf_counter() - t0) * 1000
        raise RuntimeError("the joined stream ended without a stop_reason frame")
    finally:
        watch.close()


async def disconnect(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """Client leaves a foreground run → the run is cancelled, `n` times one after another,
    beside `streams` live 50 frames/s streams read by this process."""
    n, k = int(spec.get("n", 100)), int(spec.get("streams", 40))
    warmup = int(spec.get("warmup", 5))
    # 300 s of load, one character a chunk: under the 16 KiB `provider_options` cap.
    load_body = _body("x" * int(300 / FRAME_INTERVAL_S), chunk="char", delay_s=FRAME_INTERVAL_S)
    body = _body("x " * 2000, delay_s=FRAME_INTERVAL_S)
    load: list[Response] = []
    readers: list[asyncio.Future[None]] = []
    failures = Failures()
    samples: list[float] = []
    try:
        for _ in range(k):
            response = await open_request(target, "POST", "/v1/runs", load_body)
            if response.status != 200:
                raise RuntimeError(f"background stream: HTTP {response.status}")
            load.append(response)
        readers += [asyncio.ensure_future(_drain(r)) for r in load]
        settled_s = await settle(spec.get("server_pids", []))
        cpu = CpuWindow(spec.get("server_pids", []))
        for i in range(warmup + n):
            if i == warmup:
                cpu.start()
            try:
                ms = await _disconnect_one(target, body)
            except Exception as exc:
                if i >= warmup:
                    failures.add(exc)
                continue
            if i >= warmup:
                samples.append(ms)
        cpu_result = cpu.stop()
        dead = sum(1 for r in readers if r.done())
    finally:
        for response in load:
            response.close()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    return {
        "disconnect_to_cancelled_ms": summary(samples),
        "background_streams": k,
        "background_streams_ended_early": dead,
        "settled_s": settled_s,
        **failures.json(),
        **cpu_result,
    }


async def http_runs(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """`n` zero-delay streaming runs over HTTP, `concurrency` at a time: completed runs per
    second (a run without `[DONE]` is a failure, not a run)."""
    n, concurrency = int(spec.get("n", 500)), int(spec.get("concurrency", 16))
    gate = asyncio.Semaphore(concurrency)
    failures = Failures()

    async def one() -> None:
        async with gate:
            try:
                response = await open_request(target, "POST", "/v1/runs", _body("alpha beta gamma"))
                ok = False
                async for _, data in response.events():
                    if data == "[DONE]":
                        ok = True
                response.close()
                if not ok:
                    raise RuntimeError(f"HTTP {response.status}: no [DONE]")
            except Exception as exc:
                failures.add(exc)

    await settle(spec.get("server_pids", []))
    cpu = CpuWindow(spec.get("server_pids", []))
    cpu.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - t0
    completed = n - failures.count
    return {"runs_per_s": round(completed / elapsed, 1), **failures.json(), **cpu.stop()}


SCENARIOS = {
    "start": start_overhead,
    "streams": streams,
    "cancel": cancel,
    "cancel_upstream": cancel_upstream,
    "http_runs": http_runs,
    "disconnect": disconnect,
    "burst": burst,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    target = Target.parse(spec["base_url"])
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    # Only this loop is uvloop: the wire server's thread keeps a standard one.
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(SCENARIOS[spec["scenario"]](target, spec))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
