"""Starting and stopping the bench's servers: a Ray head, `rayruns serve` on it, the baseline.

Every process is started here and ended here, by its own pid (and those of its descendants,
collected before it is signalled): nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM this process, wait; then SIGKILL whatever is left of its tree."""
        try:
            tree = [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            tree = []
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout_s)
        _, alive = psutil.wait_procs(tree, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        if self.alive():
            self.popen.kill()
            self.popen.wait(5)


def spawn(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("wb")
    popen = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    return Proc(name, popen, log_path)


def wait_healthy(url: str, proc: Proc, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{proc.name} not healthy at {url} after {timeout_s}s:\n{proc.tail()}")


class RayExited(RuntimeError):
    pass


@dataclass
class Servers:
    """The Ray head, `rayruns serve` joined to it, and the baseline; each on its own ports."""

    work_dir: Path
    ray_env: dict[str, str]
    rayruns_env: dict[str, str]
    gcs_port: int = field(default_factory=free_port)
    rayruns_port: int = field(default_factory=free_port)
    baseline_port: int = field(default_factory=free_port)
    wire_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)
    ray_temp: Path | None = None

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def direct_ingress(self) -> bool:
        env = self.ray_env
        return (
            env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"
            or env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
            or (
                env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
                and env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") != "0"
            )
        )

    @property
    def rayruns_url(self) -> str:
        """With direct ingress, the (one) ingress replica's own port: no proxy in the path."""
        port = self.replica_port if self.direct_ingress else self.rayruns_port
        return f"http://127.0.0.1:{port}"

    @property
    def baseline_url(self) -> str:
        return f"http://127.0.0.1:{self.baseline_port}"

    def env(self) -> dict[str, str]:
        # A throwaway cluster bound to 127.0.0.1: no token auth (`ray start` enables it by
        # default, and the clients here would not find the token).
        env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
            **self.ray_env,
            **self.rayruns_env,
        }
        if self.direct_ingress:
            # The replica's port range is this one port (the range's end is exclusive).
            env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(self.replica_port)
            env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(self.replica_port + 1)
        env["RAYRUNS_OPENAI_API_KEY"] = "x"
        env["RAYRUNS_OPENAI_BASE_URL"] = f"http://127.0.0.1:{self.wire_port}/v1"
        return env

    def start_ray(self, attempts: int = 3) -> Proc:
        """`ray start --head`; on a shared machine another process may take a port between
        choosing it and Ray binding it, so a head that exits early is retried on fresh ports."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_ray()
            except RayExited:
                if attempt == attempts:
                    raise
                self.gcs_port = free_port()
        raise AssertionError("unreachable")

    def _start_ray(self) -> Proc:
        # Short: Ray's unix sockets live under it.
        self.ray_temp = Path(tempfile.mkdtemp(prefix="rrb-", dir="/tmp"))
        ports = [free_port() for _ in range(7)]
        argv = [
            str(BIN / "ray"), "start", "--head", "--block", f"--port={self.gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={self.ray_temp}", f"--object-store-memory={512 * 1024 * 1024}",
            f"--ray-client-server-port={ports[0]}", f"--dashboard-agent-listen-port={ports[1]}",
            f"--dashboard-agent-grpc-port={ports[2]}", f"--runtime-env-agent-port={ports[3]}",
            f"--metrics-export-port={ports[4]}", f"--node-manager-port={ports[5]}",
            f"--object-manager-port={ports[6]}", '--resources={"rayruns_run": 1000}',
        ]  # fmt: skip
        proc = spawn("ray-head", argv, self.env(), self.work_dir)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not proc.alive():
                self.procs.remove(proc)
                shutil.rmtree(self.ray_temp, ignore_errors=True)
                raise RayExited(f"ray start exited:\n{proc.tail()}")
            if b"block forever" in proc.log_path.read_bytes():
                return proc
            time.sleep(0.5)
        raise RuntimeError(f"ray start did not come up:\n{proc.tail()}")

    def start_rayruns(self) -> Proc:
        env = self.env()
        env["RAYRUNS_DB_PATH"] = str(self.work_dir / "runs.sqlite3")
        argv = [
            str(BIN / "rayruns"), "serve", "--address", self.ray_address,
            "--port", str(self.rayruns_port),
        ]  # fmt: skip
        proc = spawn("rayruns-serve", argv, env, self.work_dir)
        self.procs.append(proc)
        wait_healthy(f"{self.rayruns_url}/healthz", proc)
        return proc

    def start_baseline(self) -> Proc:
        argv = [sys.executable, "-m", "bench.baseline", "--port", str(self.baseline_port)]
        proc = spawn("baseline", argv, self.env(), self.work_dir)
        self.procs.append(proc)
        wait_healthy(f"{self.baseline_url}/healthz", proc)
        return proc

    def stop(self) -> None:
        # Not a graceful Serve shutdown (replicas drain ≥ 30 s with direct ingress): nothing
        # here is measured any more, so each process tree gets 10 s, then SIGKILL.
        for proc in reversed(self.procs):
            proc.stop(timeout_s=10)
        self.procs.clear()
        if self.ray_temp is not None:
            shutil.rmtree(self.ray_temp, ignore_errors=True)
