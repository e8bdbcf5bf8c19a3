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
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.sse_client import Response, Target, open_request, request_json
from bench.stats import summary

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


async def _first_content_ms(target: Target, body: dict[str, Any]) -> tuple[float, Response]:
    t0 = time.perf_counter()
    response = await open_request(target, "POST", "/v1/runs", body)
    if response.status != 200:
        raise RuntimeError(f"POST /v1/runs: {response.status} {await response.read()!r}")
    return t0, response


# --- scenarios -----------------------------------------------------------------------------


async def start_overhead(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """POST → first content frame parsed, zero-delay fake, one run after another."""
    n, warmup = int(spec.get("n", 60)), int(spec.get("warmup", 5))
    samples: list[float] = []
    settled_s = await settle(spec.get("server_pids", []))
    cpu = CpuWindow(spec.get("server_pids", []))
    for i in range(warmup + n):
        if i == warmup:
            cpu.start()
        t0 = time.perf_counter()
        response = await open_request(target, "POST", "/v1/runs", _body("alpha beta gamma"))
        first: float | None = None
        async for _, data in response.events():
            if (
                first is None
                and data.startswith("{")
                and json.loads(data).get("message_type") in CONTENT
            ):
                first = time.perf_counter()
            if data == "[DONE]":
                break
        response.close()
        if first is None:
            raise RuntimeError("a run ended without a content frame")
        if i >= warmup:
            samples.append((first - t0) * 1000)
    return {"start_ms": summary(samples), "settled_s": settled_s, **cpu.stop()}


@dataclass
class _StreamState:
    latencies: list[float] = field(default_factory=list)
    first_frame: float | None = None
    past_window: bool = False
    error: str | None = None
    frames: int = 0


async def streams(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """K concurrent 50 frames/s streams; latency = client parse time - frame creation stamp.

    Streams start staggered with random phase; the window opens `warmup_s` after every stream has
    delivered a frame, lasts `duration_s`; a stream's frames stamped inside the window count,
    however late they arrive (up to `drain_s` after the window).
    """
    k = int(spec["streams"])
    duration, warmup = float(spec.get("duration_s", 8)), float(spec.get("warmup_s", 2))
    ramp_timeout, drain = float(spec.get("ramp_timeout_s", 180)), float(spec.get("drain_s", 20))
    stagger, settle_max = float(spec.get("stagger_s", 0.01)), 90.0
    total_s = k * stagger + ramp_timeout + settle_max + warmup + duration + drain
    chunks = int(total_s / FRAME_INTERVAL_S)
    body = _body("x " * chunks, delay_s=FRAME_INTERVAL_S, stamp=True)
    window: list[float] = []  # [t0, t1] once known (time.time())
    window_set = asyncio.Event()
    states = [_StreamState() for _ in range(k)]
    all_started = asyncio.Event()
    started = 0

    async def one(i: int) -> None:
        nonlocal started
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
                if state.first_frame is None:
                    state.first_frame = t
                    started += 1
                    if started == k:
                        all_started.set()
                if window:
                    if stamp > window[1]:
                        state.past_window = True
                        break
                    if stamp >= window[0]:
                        state.latencies.append((t - stamp) * 1000)
        except Exception as exc:
            state.error = f"{type(exc).__name__}: {exc}"
            if state.first_frame is None:
                started += 1
                if started == k:
                    all_started.set()
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
    window_set.set()
    cpu = CpuWindow(spec.get("server_pids", []))
    cpu.start()
    await asyncio.sleep(duration)
    cpu_result = cpu.stop()
    _, pending = await asyncio.wait(tasks, timeout=drain)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [x for s in states for x in s.latencies]
    errors = [s.error for s in states if s.error]
    stalled = sum(1 for s in states if not s.past_window and not s.error)
    expected = k * duration / FRAME_INTERVAL_S
    return {
        "streams": k,
        "ramp_s": round(ramp_s, 2),
        "settled_s": settled_s,
        "latency_ms": summary(latencies),
        "frames_in_window": len(latencies),
        "frames_expected_approx": int(expected),
        "frames_per_s": round(len(latencies) / duration, 1),
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

    async def sample(i: int) -> tuple[float, float]:
        async with gate:
            return await _cancel_one(target, flowing if i % 2 else hung, 3)

    await asyncio.gather(*(sample(i) for i in range(warmup)))
    settled_s = await settle(spec.get("server_pids", []))
    cpu = CpuWindow(spec.get("server_pids", []))
    cpu.start()
    results = await asyncio.gather(*(sample(i) for i in range(n)))
    return {
        "cancel_to_done_ms": summary([r[0] for r in results]),
        "cancel_answered_ms": summary([r[1] for r in results]),
        "settled_s": settled_s,
        **cpu.stop(),
    }


async def cancel_upstream(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """OpenAI provider against the local wire server: cancel sent → upstream connection closed."""
    from tests.providers.wire_servers import start_wire_server

    server = start_wire_server(port=int(spec["wire_port"]))
    n = int(spec.get("n", 40))
    body = {
        "model": "openai/stall-5",
        "messages": [{"role": "user", "content": "bench"}],
    }
    to_close: list[float] = []
    to_done: list[float] = []
    try:
        await _cancel_one(target, body, 5)  # warmup: the actor loads the SDK
        await settle(spec.get("server_pids", []))
        for _ in range(n):
            sent: list[float] = []
            done_ms, _ = await _cancel_one(target, body, 5, sent.append)
            to_done.append(done_ms)
            request = server.recorder.last_request("stall-5")
            conn = request.connection
            closed = await asyncio.to_thread(conn.closed.wait, 5.0)
            if not closed or conn.closed_at is None:
                to_close.append(float("inf"))
            else:
                to_close.append((conn.closed_at - sent[0]) * 1000)
    finally:
        server.stop()
    return {
        "cancel_to_upstream_close_ms": summary(to_close),
        "cancel_to_done_ms": summary(to_done),
    }


async def http_runs(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """`n` zero-delay streaming runs over HTTP, `concurrency` at a time: runs per second."""
    n, concurrency = int(spec.get("n", 500)), int(spec.get("concurrency", 16))
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with gate:
            response = await open_request(target, "POST", "/v1/runs", _body("alpha beta gamma"))
            ok = False
            async for _, data in response.events():
                if data == "[DONE]":
                    ok = True
            response.close()
            failures += not ok

    await settle(spec.get("server_pids", []))
    cpu = CpuWindow(spec.get("server_pids", []))
    cpu.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - t0
    return {"runs_per_s": round(n / elapsed, 1), "failures": failures, **cpu.stop()}


SCENARIOS = {
    "start": start_overhead,
    "streams": streams,
    "cancel": cancel,
    "cancel_upstream": cancel_upstream,
    "http_runs": http_runs,
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
