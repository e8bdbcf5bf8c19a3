"""`rayruns serve` as a user runs it: its own local Ray (or a cluster it joins with --address),
the API on the --host it was given, and a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from bench.procs import Servers
from tests.conftest import _free_port

# Each test starts a Ray of its own: they run before the session's Ray exists.
pytestmark = [pytest.mark.own_ray, pytest.mark.usefixtures("no_session_ray")]


def wait_ready(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 120
    while True:  # the server has no event to offer before it listens: poll with a deadline
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "rayruns serve never became ready"
        time.sleep(0.2)


def test_serve_joins_a_cluster_on_its_host_and_leaves_the_cluster_running(
    tmp_path: Path,
) -> None:
    cluster = Servers(tmp_path, {}, {})
    head = cluster.start_ray()
    port = _free_port()
    env = {
        **cluster.env(),
        "RAYRUNS_DB_PATH": str(tmp_path / "runs.sqlite3"),
        "RAYRUNS_NAMESPACE": "rayruns-cli-address-test",
        "RAYRUNS_POOL_SIZE": "1",
    }
    # Another loopback address than the default 127.0.0.1: only --host can put it there.
    argv = ["serve", "--address", cluster.ray_address, "--host", "127.0.0.2", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayruns.serve_app", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.2:{port}"
        wait_ready(proc, url)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        r = httpx.post(f"{url}/v1/runs", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        assert not psutil.Process(proc.pid).children(recursive=True), "Ray runs in the cluster"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert head.alive(), "the cluster rayruns joined outlives it"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        cluster.stop()


def test_serve_answers_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "RAYRUNS_DB_PATH": str(tmp_path / "runs.sqlite3"),
        "RAYRUNS_NAMESPACE": "rayruns-cli-test",
        "RAYRUNS_POOL_SIZE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayruns.serve_app", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url)
        r = httpx.post(
            f"{url}/v1/runs",
            json={"messages": [{"role": "user", "content": "hello world"}]},
            timeout=30,
        )
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "a local Ray runs under the server"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.name() for p in alive]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_on_a_database_another_registry_owns_stops_naming_it(tmp_path: Path) -> None:
    from rayruns.actors.store import RunStore

    db = tmp_path / "runs.sqlite3"
    owner = RunStore(db, "the registry of another server")
    env = {**os.environ, "RAYRUNS_DB_PATH": str(db), "RAYRUNS_NAMESPACE": "rayruns-cli-locked"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rayruns.serve_app", "serve", "--port", str(_free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            start_new_session=True,
        )
    finally:
        owner.close()
    assert done.returncode == 1, done.stderr
    assert "rayruns serve: error:" in done.stderr
    assert "is in use by another registry (the registry of another server" in done.stderr
    assert "Traceback" not in done.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rayruns.serve_app", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_detach_waits_for_healthz_then_stop_ends_server_and_its_ray(tmp_path: Path) -> None:
    port = _free_port()
    env_file = tmp_path / "rayruns.env"  # where it listens comes from the settings file
    env_file.write_text(
        f"RAYRUNS_PORT={port}\nRAYRUNS_DB_PATH={tmp_path / 'runs.sqlite3'}\n"
        "RAYRUNS_NAMESPACE=rayruns-cli-detach-test\nRAYRUNS_POOL_SIZE=1\n"
    )
    pid_file, log_file = tmp_path / "serve.pid", tmp_path / "serve.log"
    common = ["--env-file", str(env_file), "--pid-file", str(pid_file)]
    started = _cli("serve", "--detach", *common, "--log-file", str(log_file))
    try:
        assert started.returncode == 0, started.stderr
        # It returned once the server answers: no waiting here.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        server = psutil.Process(int(pid_file.read_text()))
        children = server.children(recursive=True)
        assert children, "a local Ray runs under the server"

        again = _cli("serve", "--detach", *common, "--log-file", str(log_file))
        assert again.returncode == 1 and "already running" in again.stderr

        stopped = _cli("stop", *common)
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped" in stopped.stderr
        assert not server.is_running()
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.name() for p in alive]}"
        assert not pid_file.exists()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert _cli("stop", *common).returncode == 0  # nothing to stop is not an error
    finally:
        _cli("stop", *common, "--timeout", "5")


def test_detach_fails_with_the_log_tail_when_the_server_dies(tmp_path: Path) -> None:
    pid_file, log_file = tmp_path / "serve.pid", tmp_path / "serve.log"
    failed = _cli(
        "serve",
        "--detach",
        "--address",
        "no-such-cluster",
        "--port",
        str(_free_port()),
        "--pid-file",
        str(pid_file),
        "--log-file",
        str(log_file),
    )
    assert failed.returncode == 1
    assert "exited with code 1 before it answered" in failed.stderr
    assert "Invalid address format: no-such-cluster" in failed.stderr  # the log's tail
    assert not pid_file.exists()
