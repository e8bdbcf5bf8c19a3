"""The pid file of a `rayruns serve` process, and a bounded stop of the server it names.

`rayruns stop` signals only the process its pid file names, never every process whose command
line looks alike (a `pkill -f 'rayruns serve'` also matches the shell that runs it).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

log = logging.getLogger("rayruns")

DEFAULT_DIR = Path("~/.rayruns")
# A process that was already running when its pid file was written; the slack absorbs clock
# granularity between the kernel's start time and the file system's mtime.
_START_SLACK_S = 1.0

StopOutcome = Literal["not running", "stopped", "killed"]


def default_pid_file(port: int) -> Path:
    """One server per port and host: the default pid file names the port."""
    return DEFAULT_DIR / f"serve-{port}.pid"


@dataclass(frozen=True)
class PidFile:
    path: Path

    @classmethod
    def at(cls, path: Path) -> PidFile:
        return cls(path.expanduser().absolute())

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(self.path)  # readers never see a half-written file

    def remove(self, pid: int | None = None) -> None:
        """Remove the file; with `pid`, only while it still names that process."""
        try:
            if pid is None or self._read_pid() == pid:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def _read_pid(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def live(self) -> psutil.Process | None:
        """The process this file names, if it still runs (not a later process given its pid)."""
        pid = self._read_pid()
        if pid is None:
            return None
        try:
            written = self.path.stat().st_mtime
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            if proc.create_time() > written + _START_SLACK_S:
                return None
        except (FileNotFoundError, psutil.Error):
            return None
        return proc

    def stop(self, timeout_s: float) -> StopOutcome:
        """SIGTERM the server, wait up to `timeout_s`, then SIGKILL it and what it started."""
        proc = self.live()
        if proc is None:
            self.remove()
            return "not running"
        try:
            children = proc.children(recursive=True)
        except psutil.Error:
            children = []
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
        _, alive = psutil.wait_procs([proc], timeout=timeout_s)
        outcome: StopOutcome = "stopped"
        if alive:
            log.warning("pid %d did not stop within %.0f s: killing it", proc.pid, timeout_s)
            outcome = "killed"
            for p in [proc, *children]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs([proc, *children], timeout=10)
        self.remove(proc.pid)
        return outcome
