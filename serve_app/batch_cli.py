"""`rayruns batch IN.jsonl -o OUT.jsonl`: run a file of requests, append each result as it ends.

Input: one JSON object per line, the body of `POST /v1/runs` plus an optional `id` (a string or
an integer; default: the 1-based line number). Blank lines are skipped. Duplicate ids are a
usage error, found before anything runs. A line that is not JSON, not an object, not a valid
request, or that names an unknown provider or bad `provider_options`, is reported on stderr with
its line number and recorded as a failed result (`invalid_request`); the batch goes on.

Output: one JSON line per run, in the order the runs end: id, status, stop_reason, text, usage,
error ({error_type, message} or null), run_id, ttft_ms, duration_ms. Each line is written whole
and flushed as its run ends.

Resume: on start, a partial last line (left by a crash) is cut off. Input ids whose record is
`completed` or `failed` are skipped; any other record of an input id (`cancelled`, by Ctrl-C or
by a cancel from elsewhere) is removed and the id runs again, so OUT ends with one record per
id. To retry failures, delete their lines from OUT. Records of ids not in the input stay.

Ctrl-C (SIGINT) or SIGTERM (what `kill` and job schedulers send): nothing new starts; every run
in flight is cancelled through the registry, awaited, and recorded as `cancelled`; exit 130
(SIGINT) or 143 (SIGTERM). A second signal, or the actors' cancel grace passing, stops the
waiting.

Exit codes: 0 when every input id ends with a `completed` record (kept ones included); 1 when any
failed or was cancelled, or Ray failed; 2 for usage errors; 130 on Ctrl-C; 143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from rayruns.actors.batch import BatchEngine, BatchItem
from rayruns.actors.client import RegistryFailed
from rayruns.actors.handle import RunResult
from rayruns.actors.runs import Runs
from rayruns.serve_app.batch_files import BatchFileError, ResultLog, read_items, scan_ids
from rayruns.serve_app.batch_progress import Display, Tally, make_display
from rayruns.serve_app.settings import Settings

# Past the registry's own cancel grace (after which it kills a run's actor), stop waiting.
GRACE_MARGIN_S = 5.0


@dataclass
class BatchExit:
    """Why this invocation's runs stopped early, if they did."""

    interrupted: bool = False
    error: Exception | None = None
    signal: int = signal.SIGINT

    @property
    def exit_code(self) -> int:
        return 128 + self.signal


def add_batch_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "batch",
        help="run a JSONL file of run requests, results to a JSONL file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="IN.jsonl", help="one run request per line")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.jsonl")
    p.add_argument("--concurrency", type=_positive_int, default=16, help="runs at once (16)")
    p.add_argument(
        "--address", default=None, help="join this Ray cluster (default: start a local Ray)"
    )
    p.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (10)",
    )


def batch_command(args: argparse.Namespace, settings: Settings) -> int:
    started = time.monotonic()
    stopped = BatchExit()

    def terminated(signum: int, _: object) -> None:
        stopped.signal = signum
        raise KeyboardInterrupt

    # Outside the runs, SIGTERM stops as Ctrl-C does (Ray's processes are shut down on the way).
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        return _batch(args, settings, started, stopped)
    except KeyboardInterrupt:  # before or after the runs: nothing is in flight
        _say("batch: interrupted")
        return stopped.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous)


def _batch(args: argparse.Namespace, settings: Settings, started: float, stopped: BatchExit) -> int:
    try:
        input_ids, out = _open_files(args.input, args.output)
    except (BatchFileError, OSError) as exc:
        _say(f"rayruns batch: error: {exc}")
        return 2
    kept = {key: status for key, status in out.done.items() if key in input_ids}
    tally = Tally(total=len(input_ids) - len(kept))
    display = make_display(tally, args.progress_interval)
    if out.dropped_tail:
        display.note(f"batch: cut a partial last line off {out.path}")
    try:
        if tally.total:
            _connect_and_run(args, settings, display, out, set(kept), stopped)
    except RegistryFailed as exc:
        _say(f"rayruns batch: error: {exc}")
        return 1
    finally:
        out.close()
    _say(_summary(tally, kept, time.monotonic() - started, stopped))
    if stopped.interrupted:
        return stopped.exit_code
    if stopped.error is not None:
        _say(f"rayruns batch: error: {type(stopped.error).__name__}: {stopped.error}")
        return 1
    all_completed = tally.completed == tally.total and set(kept.values()) <= {"completed"}
    return 0 if all_completed else 1


def _open_files(input: Path, output: Path) -> tuple[set[str], ResultLog]:
    if not input.is_file():
        raise BatchFileError(f"no input file {input}")
    if output.exists() and output.resolve() == input.resolve():
        raise BatchFileError("the output file is the input file")
    input_ids = scan_ids(input)
    return input_ids, ResultLog.open(output, input_ids)


def _connect_and_run(
    args: argparse.Namespace,
    settings: Settings,
    display: Display,
    out: ResultLog,
    skip: set[str],
    stopped: BatchExit,
) -> None:
    try:
        # "local": without --address, a fresh local Ray, never one this machine happens to run.
        runs = Runs.connect(args.address or "local", settings.actors, settings.providers)
        grace_s = settings.actors.cancel_grace_s + GRACE_MARGIN_S
        asyncio.run(_run(runs, args, display, out, skip, grace_s, stopped))
    finally:
        ray.shutdown()


async def _run(
    runs: Runs,
    args: argparse.Namespace,
    display: Display,
    out: ResultLog,
    skip: set[str],
    grace_s: float,
    stopped: BatchExit,
) -> None:
    tally = display.tally
    force = asyncio.Event()

    def started(_: BatchItem) -> None:
        tally.running = engine.running
        display.update()

    def ended(_: BatchItem, result: RunResult) -> None:
        tally.running = engine.running
        if result.run_id is None and result.error is not None:  # it never started
            display.note(result.error.message)
        out.write(_rounded(result))
        tally.add(result)
        display.update()

    engine = BatchEngine(runs.client, args.concurrency, on_start=started, on_result=ended)

    def interrupt(signum: int) -> None:
        if engine.stopping.is_set():
            force.set()
            return
        stopped.interrupted = True
        stopped.signal = signum
        engine.stopping.set()
        display.note(
            f"batch: interrupted ({signal.Signals(signum).name}); cancelling {engine.running} "
            "runs in flight (Ctrl-C again to stop waiting)"
        )

    loop = asyncio.get_running_loop()
    on_term = signal.getsignal(signal.SIGTERM)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt, signum)
    try:
        async with display.shown():
            with contextlib.closing(read_items(args.input, skip)) as items:
                tally.since = time.monotonic()  # runs/s without Ray's start
                try:
                    await engine.run(items, grace_s=grace_s, force=force)
                finally:
                    tally.until = time.monotonic()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        signal.signal(signal.SIGTERM, on_term)  # asyncio leaves the default behind
    stopped.error = engine.error


def _rounded(result: RunResult) -> RunResult:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return result.model_copy(
        update={"ttft_ms": ms(result.ttft_ms), "duration_ms": ms(result.duration_ms)}
    )


def _summary(tally: Tally, kept: dict[str, str], wall_s: float, stopped: BatchExit) -> str:
    lines = [
        f"batch: {tally.finished} runs: {tally.completed} completed, {tally.failed} failed, "
        f"{tally.cancelled} cancelled; {tally.rate():.1f} runs/s; wall time {wall_s:.1f} s"
    ]
    if kept:
        failed = sum(status == "failed" for status in kept.values())
        lines.append(
            f"batch: skipped {len(kept)} ids already in the output "
            f"({len(kept) - failed} completed, {failed} failed)"
        )
    left = tally.total - tally.finished
    if left and (stopped.interrupted or stopped.error is not None):
        lines.append(f"batch: {left} runs not done; run the same command again to resume")
    return "\n".join(lines)


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value
