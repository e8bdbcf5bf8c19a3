"""`rayruns serve --detach`: start the server in the background and return once it answers.

A backgrounded `nohup … &` always reports success; this waits for `/healthz` and, when the
server dies or never answers, fails with the tail of its log, so `ray up` fails loudly too.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from rayruns.serve_app.pidfile import PidFile

log = logging.getLogger("rayruns")

TAIL_LINES = 40


def health_url(host: str, port: int) -> str:
    """Where this host reaches a server bound to `host` (a wildcard bind answers on loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


def start_detached(
    serve_argv: Sequence[str],
    *,
    log_file: Path,
    pid_file: PidFile,
    url: str,
    ready_timeout_s: float,
    stop_timeout_s: float,
) -> int:
    """Run `rayruns <serve_argv>` in its own session, logging to `log_file`; 0 once healthy."""
    if _answers(url):
        log.error("something already answers at %s: stop it first (rayruns stop)", url)
        return 1
    log_file = log_file.expanduser().absolute()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if log_file.exists():
        log_file.replace(log_file.with_name(log_file.name + ".1"))  # keep the previous run's
    with log_file.open("wb") as out:
        # Its own session: the SSH session that `ray up` runs this in can end without a SIGHUP.
        proc = subprocess.Popen(
            [sys.executable, "-m", "rayruns.serve_app", *serve_argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + ready_timeout_s
    while not _answers(url):
        code = proc.poll()
        if code is not None:
            log.error(
                "rayruns serve exited with code %d before it answered; the end of %s:\n%s",
                code,
                log_file,
                _tail(log_file),
            )
            return 1
        if time.monotonic() > deadline:
            pid_file.stop(stop_timeout_s)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.error(
                "rayruns serve did not answer at %s within %.0f s; the end of %s:\n%s",
                url,
                ready_timeout_s,
                log_file,
                _tail(log_file),
            )
            return 1
        time.sleep(0.5)  # the child offers nothing to wait on before it listens
    if proc.poll() is not None:  # what answered was another server, started meanwhile
        log.error("rayruns serve exited; the end of %s:\n%s", log_file, _tail(log_file))
        return 1
    log.info("rayruns is serving (pid %d): %s, log %s", proc.pid, url, log_file)
    return 0
