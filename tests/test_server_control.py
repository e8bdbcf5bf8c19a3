"""The pieces `rayruns serve`/`rayruns stop` rest on, without Ray: the settings file, the pid
file and its bounded stop, the watch that notices a cluster is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from rayruns.serve_app.cli import main
from rayruns.serve_app.cluster_watch import ClusterWatch
from rayruns.serve_app.detach import health_url
from rayruns.serve_app.pidfile import PidFile
from rayruns.serve_app.settings import Settings


def test_the_settings_file_is_parsed_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "ran"
    env_file = tmp_path / "rayruns.env"
    env_file.write_text(
        "# provider keys and settings\n"
        "RAYRUNS_PORT=9123\n"
        f"OPENAI_API_KEY=sk-$(touch {marker})\n"
        'RAYRUNS_HOST="0.0.0.0"\n'
        f"RAYRUNS_POOL_SIZE=2; touch {marker}\n"
    )
    monkeypatch.delenv("RAYRUNS_PORT", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("RAYRUNS_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("RAYRUNS_HOST", raising=False)
    with pytest.raises(ValueError, match="pool_size"):  # a value is a value, not a command
        Settings.from_env(env_file)
    env_file.write_text(env_file.read_text().replace(f"; touch {marker}", ""))
    settings = Settings.from_env(env_file)
    assert settings.serve.port == 9123 and settings.serve.host == "0.0.0.0"
    assert settings.actors.pool_size == 2
    key = settings.providers.openai_api_key
    assert key is not None and key.get_secret_value() == f"sk-$(touch {marker})"
    assert not marker.exists()
    monkeypatch.setenv("RAYRUNS_PORT", "9124")  # the environment wins over the file
    assert Settings.from_env(env_file).serve.port == 9124


def test_a_missing_or_bad_settings_file_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nope.env"
    assert main(["serve", "--env-file", str(missing)]) == 2
    assert f"--env-file {missing}: no such file" in caplog.text
    bad = tmp_path / "bad.env"
    bad.write_text("RAYRUNS_PORT=eighty\n")
    assert main(["stop", "--env-file", str(bad)]) == 2
    assert "bad settings" in caplog.text and "port" in caplog.text


def test_health_url_reaches_a_wildcard_bind_on_loopback() -> None:
    assert health_url("0.0.0.0", 8000) == "http://127.0.0.1:8000/healthz"
    assert health_url("::", 8000) == "http://[::1]:8000/healthz"
    assert health_url("10.1.2.3", 81) == "http://10.1.2.3:81/healthz"


def _sleeper(ignore_sigterm: bool) -> subprocess.Popen[str]:
    code = (
        "import signal, sys, time\n"
        f"if {ignore_sigterm}: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_stop_terminates_the_process_of_the_pid_file(
    tmp_path: Path, sleepers: list[subprocess.Popen[str]]
) -> None:
    proc = _sleeper(ignore_sigterm=False)
    sleepers.append(proc)
    pid_file = PidFile.at(tmp_path / "serve.pid")
    pid_file.write(proc.pid)
    assert pid_file.stop(timeout_s=30) == "stopped"
    assert not psutil.pid_exists(proc.pid)  # ended and reaped by the stop
    assert not pid_file.path.exists()


def test_stop_kills_a_process_that_ignores_sigterm(
    tmp_path: Path, sleepers: list[subprocess.Popen[str]]
) -> None:
    proc = _sleeper(ignore_sigterm=True)
    sleepers.append(proc)
    pid_file = PidFile.at(tmp_path / "serve.pid")
    pid_file.write(proc.pid)
    assert pid_file.stop(timeout_s=0.5) == "killed"
    assert not psutil.pid_exists(proc.pid)
    assert not pid_file.path.exists()


def test_a_stale_pid_file_stops_nothing(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pid_file = PidFile.at(tmp_path / "serve.pid")
    pid_file.write(gone.pid)
    assert pid_file.live() is None
    assert pid_file.stop(timeout_s=5) == "not running"
    assert not pid_file.path.exists()
    assert PidFile.at(tmp_path / "never-written.pid").stop(timeout_s=5) == "not running"


def test_a_pid_given_to_a_later_process_is_not_stopped(
    tmp_path: Path, sleepers: list[subprocess.Popen[str]]
) -> None:
    """A pid file older than the process it names was written for another process."""
    proc = _sleeper(ignore_sigterm=False)
    sleepers.append(proc)
    pid_file = PidFile.at(tmp_path / "serve.pid")
    pid_file.write(proc.pid)
    an_hour_ago = time.time() - 3600
    os.utime(pid_file.path, (an_hour_ago, an_hour_ago))
    assert pid_file.live() is None
    assert pid_file.stop(timeout_s=5) == "not running"
    assert psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and proc.poll() is None


def test_the_watch_notices_when_the_cluster_port_closes() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepting = threading.Thread(target=lambda: _accept_until_closed(listener), daemon=True)
    accepting.start()
    gone = threading.Event()
    watch = ClusterWatch(f"127.0.0.1:{port}", on_gone=gone.set, interval_s=0.05, misses=3)
    assert watch._reachable()
    watch.start()
    listener.close()
    assert gone.wait(timeout=30)
    watch.stop()


def _accept_until_closed(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.close()
