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
