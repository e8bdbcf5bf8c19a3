"""`rayruns serve` as a user runs it: its own local Ray, the API, and a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import _free_port


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
        deadline = time.monotonic() + 120
        while True:  # the server has no event to offer before it listens: poll with a deadline
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "rayruns serve never became ready"
            time.sleep(0.2)
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
