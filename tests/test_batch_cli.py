"""`rayruns batch` end to end: the CLI in a subprocess with its own local Ray, on the fake provider.

Each Ray-starting invocation costs a few seconds (more with many cold run actors), so there are
four of them, three at a low concurrency; each is followed by a check that none of its Ray
processes outlived it. The engine's give-up path is in tests/test_batch_engine.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

# Each invocation starts its own local Ray: these tests run before the session's Ray exists.
pytestmark = [pytest.mark.own_ray, pytest.mark.usefixtures("no_session_ray")]

RAYRUNS = Path(sys.executable).with_name("rayruns")
FAILS = ["timeout", "rate_limit", "auth", "bad_request", "error"]
ERROR_TYPE = {
    "timeout": "llm_timeout",
    "rate_limit": "llm_rate_limit",
    "auth": "llm_authentication",
    "bad_request": "llm_bad_request",
    "error": "llm_error",
}
PROGRESS = re.compile(r"^batch: \d+/\d+ finished \(.*\), [\d.]+ runs/s, ETA \S+$", re.M)


def summary_counts(stderr: str) -> dict[str, int]:
    found = re.search(
        r"^batch: (\d+) runs: (\d+) completed, (\d+) failed, (\d+) cancelled; "
        r"[\d.]+ runs/s; wall time [\d.]+ s$",
        stderr,
        re.M,
    )
    assert found, stderr
    runs, completed, failed, cancelled = map(int, found.groups())
    return {"runs": runs, "completed": completed, "failed": failed, "cancelled": cancelled}


def request(content: str, **options: Any) -> dict[str, Any]:
    return {
        "model": "fake/echo",
        "messages": [{"role": "user", "content": content}],
        "provider_options": options,
    }


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read_out(path: Path) -> list[dict[str, Any]]:
    """Every record of OUT; fails on anything but whole JSON lines."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "OUT ends with a partial line"
    return [json.loads(line) for line in data.splitlines()]


def by_id(records: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    counts = Counter(json.dumps(r["id"]) for r in records)
    assert [k for k, n in counts.items() if n > 1] == [], "an id is recorded twice"
    return {r["id"]: r for r in records}


@dataclass
class Cli:
    """The environment of one CLI invocation: its own Ray namespace and records."""

    env: dict[str, str]
    namespace: str

    def start(self, *args: str | Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(RAYRUNS), "batch", *map(str, args), "--progress-interval", "0.5"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )

    def run(self, *args: str | Path, timeout: float = 60) -> tuple[int, str]:
        proc = self.start(*args)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        finally:
            _kill(proc)
        self.assert_no_processes_left()
        return proc.returncode, stderr

    def assert_no_processes_left(self, timeout: float = 20) -> None:
        """No process of this invocation's Ray (they inherit its environment) survives it."""
        deadline = time.monotonic() + timeout
        while left := self._processes():
            assert time.monotonic() < deadline, f"left behind: {left}"
            time.sleep(0.2)

    def _processes(self) -> list[str]:
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("RAYRUNS_NAMESPACE") == self.namespace:
                    found.append(f"{proc.pid} {proc.name()}")
        return found


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make_cli(tmp_path: Path) -> Cli:
    namespace = f"rayruns-batch-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAYRUNS_"))}
    env.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAYRUNS_NAMESPACE=namespace,
        RAYRUNS_DB_PATH=str(tmp_path / "runs.sqlite3"),
    )
    return Cli(env, namespace)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return make_cli(tmp_path)


# -- a mixed batch: scripted failures, malformed lines, plain progress ----------------------

MALFORMED = {
    50: ("not json {", "not JSON"),
    100: ("[1, 2, 3]", "not a JSON object"),
    150: (json.dumps(request("x") | {"model": "nope/x"}), "unknown provider 'nope'"),
    200: (json.dumps({"model": "fake/echo"}), "messages: Field required"),
}
BLANK = 120


@dataclass
class Mixed:
    returncode: int
    stderr: str
    records: dict[Any, dict[str, Any]]
    expected: dict[Any, dict[str, Any]]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Mixed:
    tmp = tmp_path_factory.mktemp("mixed")
    lines: list[str] = []
    expected: dict[Any, dict[str, Any]] = {}
    for n in range(1, 306):
        if n in MALFORMED:
            lines.append(MALFORMED[n][0])
            expected[n] = {"status": "failed", "error_type": "invalid_request"}
            continue
        if n == BLANK:
            lines.append("   ")
            continue
        id: Any = f"r{n}" if n % 2 == 0 else n  # odd lines: the line number is the id
        body = request(f"echo {n} words")
        want: dict[str, Any] = {"status": "completed", "text": f"echo {n} words"}
        if n % 7 == 0:
            kind = FAILS[n % 5]
            body["provider_options"] = {"fail": kind, "fail_after": n % 2}
            text = "echo " if n % 2 else ""
            want = {"status": "failed", "text": text, "error_type": ERROR_TYPE[kind]}
        if n % 11 == 0:
            body |= {"stream": False, "background": True, "include_pings": False}
        if id != n:
            body["id"] = id
        lines.append(json.dumps(body))
        expected[id] = want
    source = write_lines(tmp / "in.jsonl", lines)
    out = tmp / "out.jsonl"
    returncode, stderr = make_cli(tmp).run(source, "-o", out, timeout=90)
    return Mixed(returncode, stderr, by_id(read_out(out)), expected)


def test_a_mixed_batch_records_every_id_once_with_its_outcome(mixed: Mixed) -> None:
    assert mixed.returncode == 1, mixed.stderr
    assert set(mixed.records) == set(mixed.expected)
    for id, want in mixed.expected.items():
        got = mixed.records[id]
        assert got["status"] == want["status"], got
        if "text" in want:
            assert got["text"] == want["text"], got
        if want["status"] == "completed":
            assert got["error"] is None and got["stop_reason"] == "end_turn"
            assert got["usage"]["completion_tokens"] == 3 and got["run_id"].startswith("run-")
            assert got["ttft_ms"] > 0 and got["duration_ms"] >= got["ttft_ms"]
        else:
            assert set(got["error"]) == {"error_type", "message"}
            assert got["error"]["error_type"] == want["error_type"], got


def test_malformed_lines_are_invalid_requests_named_by_line(mixed: Mixed) -> None:
    for n, (_, problem) in MALFORMED.items():
        got = mixed.records[n]
        assert got["run_id"] is None and got["error"]["error_type"] == "invalid_request"
        assert got["error"]["message"].startswith(f"line {n}: {problem}"), got
        assert re.search(rf"^line {n}: {re.escape(problem)}", mixed.stderr, re.M), mixed.stderr


def test_without_a_terminal_progress_is_plain_lines_and_a_summary(mixed: Mixed) -> None:
    assert len(PROGRESS.findall(mixed.stderr)) >= 2, mixed.stderr
    failed = sum(w["status"] == "failed" for w in mixed.expected.values())
    assert summary_counts(mixed.stderr) == {
        "runs": len(mixed.expected),
        "completed": len(mixed.expected) - failed,
        "failed": failed,
        "cancelled": 0,
    }
    assert "\x1b[" not in "".join(PROGRESS.findall(mixed.stderr))  # no terminal codes


# -- resume ------------------------------------------------------------------------------------


def test_a_complete_batch_exits_0_and_a_rerun_only_runs_what_is_missing(
    cli: Cli, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(request(f"t {n}")) for n in range(30)])
    out = tmp_path / "out.jsonl"
    returncode, stderr = cli.run(source, "-o", out, "--concurrency", "4")
    assert returncode == 0, stderr
    first = read_out(out)
    assert sorted(r["id"] for r in first) == list(range(1, 31))
    assert all(r["status"] == "completed" for r in first)

    # As after a crash: 20 records kept, one of them cancelled, and a partial line.
    kept, cancelled = first[:19], first[19] | {"status": "cancelled", "stop_reason": "cancelled"}
    out.write_text("".join(json.dumps(r) + "\n" for r in [*kept, cancelled]) + '{"id": 3, "st')
    returncode, stderr = cli.run(source, "-o", out, "--concurrency", "4")
    assert returncode == 0, stderr
    assert summary_counts(stderr)["runs"] == 11, stderr
    assert "skipped 19 ids already in the output" in stderr
    second = by_id(read_out(out))
    assert sorted(second) == list(range(1, 31))
    for record in kept:  # not run again
        assert second[record["id"]] == record
    rerun = second[cancelled["id"]]
    assert rerun["status"] == "completed" and rerun["run_id"] != cancelled["run_id"]


# -- Ctrl-C ------------------------------------------------------------------------------------


class LineReader:
    """A pipe's lines, read on a thread, so that the test can wait for one with a deadline."""

    def __init__(self, pipe: Any) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "".join(self.lines)
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def rest(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            self.lines.append(line)
        return "".join(self.lines)


@pytest.mark.parametrize(
    ("how", "code"), [("ctrl-c", 130), ("sigterm", 143)], ids=["ctrl-c", "sigterm"]
)
def test_a_signal_cancels_the_runs_in_flight_and_exits_128_plus_it(
    cli: Cli, tmp_path: Path, how: str, code: int
) -> None:
    quick = [request(f"quick {n}") for n in range(2)]
    hanging = [request("x", text="one two three", hang_after=2) for _ in range(10)]
    source = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in quick + hanging])
    out = tmp_path / "out.jsonl"
    proc = cli.start(source, "-o", out, "--concurrency", "4")
    try:
        stderr = LineReader(proc.stderr)
        stderr.wait_for(r"finished \(2 completed, 0 failed, 0 cancelled, 4 running\)", 60)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        else:
            proc.send_signal(signal.SIGTERM)  # what `kill` does: the batch process alone
        assert proc.wait(timeout=60) == code  # a hang guard, not a timing
        log = stderr.rest(30)
    finally:
        _kill(proc)
    assert summary_counts(log) == {"runs": 6, "completed": 2, "failed": 0, "cancelled": 4}
    assert "6 runs not done; run the same command again to resume" in log
    records = by_id(read_out(out))
    assert sorted(records) == list(range(1, 7))
    for record in records.values():
        if record["id"] > 2:  # cancelled through the registry, which recorded it
            assert record["status"] == "cancelled" and record["stop_reason"] == "cancelled"
            assert "one two ".startswith(record["text"]) and record["run_id"].startswith("run-")
    cli.assert_no_processes_left()


# -- usage errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no input", "no input file"),
        ("duplicate ids", "duplicate ids: id 1 on line 2 (first on line 1)"),
        ("output is not a results file", "out.jsonl line 1 is not a result record"),
    ],
)
def test_usage_errors_exit_2_before_anything_runs(
    cli: Cli, tmp_path: Path, case: str, message: str
) -> None:
    source = tmp_path / "in.jsonl"
    out = tmp_path / "out.jsonl"
    if case == "duplicate ids":
        write_lines(source, [json.dumps(request("a")), json.dumps(request("b") | {"id": 1})])
    elif case == "output is not a results file":
        write_lines(source, [json.dumps(request("a"))])
        write_lines(out, ["some notes"])
    returncode, stderr = cli.run(source, "-o", out)
    assert returncode == 2, stderr
    assert message in stderr
    assert "Started a local Ray" not in stderr
    if case == "output is not a results file":
        assert out.read_text() == "some notes\n"
    else:
        assert not out.exists()


def test_a_batch_on_a_database_another_registry_owns_stops_naming_it(
    cli: Cli, tmp_path: Path
) -> None:
    from rayruns.actors.store import RunStore

    source = write_lines(tmp_path / "in.jsonl", [json.dumps(request("never run"))])
    owner = RunStore(Path(cli.env["RAYRUNS_DB_PATH"]), "the serving registry of the test")
    try:
        code, stderr = cli.run(source, "-o", tmp_path / "out.jsonl", timeout=90)
    finally:
        owner.close()
    assert code == 1, stderr
    assert "is in use by another registry (the serving registry of the test" in stderr
    assert "RAYRUNS_DB_PATH" in stderr
