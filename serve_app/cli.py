"""`rayruns serve`: start (or join) Ray, run the Serve app, stop both cleanly on Ctrl-C.

`rayruns stop`: stop the server a pid file names. `rayruns batch`: run a JSONL file of requests
(serve_app/batch_cli.py). `rayruns keys`: the server's API keys (serve_app/keys_cli.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from rayruns.actors.database import open_database
from rayruns.serve_app.batch_cli import add_batch_parser, batch_command
from rayruns.serve_app.cluster_watch import ClusterWatch
from rayruns.serve_app.detach import health_url, start_detached
from rayruns.serve_app.keys_cli import add_keys_parser, keys_command
from rayruns.serve_app.pidfile import PidFile, default_pid_file
from rayruns.serve_app.settings import Settings

log = logging.getLogger("rayruns")

# Shutdown is bounded: Serve's cleanup waits on the cluster, which may be gone or wedged.
SERVE_CLEANUP_TIMEOUT_S = 20.0
RAY_SHUTDOWN_TIMEOUT_S = 10.0
# `rayruns stop` waits for both of the above before it kills.
STOP_TIMEOUT_S = SERVE_CLEANUP_TIMEOUT_S + RAY_SHUTDOWN_TIMEOUT_S + 5.0


def _within(timeout_s: float, what: str, fn: Callable[[], object]) -> bool:
    """Run `fn` in a daemon thread; False when it has not returned within `timeout_s`."""
    errors: list[BaseException] = []

    def call() -> None:
        try:
            fn()
        except BaseException as exc:  # reported below; a failed cleanup must not stop the rest
            errors.append(exc)

    thread = threading.Thread(target=call, name=f"rayruns-{what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        log.error("%s did not finish within %.0f s", what, timeout_s)
        return False
    if errors:
        log.error("%s failed: %s", what, errors[0])
    return True


def _pid_file(args: argparse.Namespace, settings: Settings) -> PidFile:
    return PidFile.at(args.pid_file or default_pid_file(settings.serve.port))


def _already_running(pid_file: PidFile) -> bool:
    running = pid_file.live()
    if running is not None:
        log.error(
            "rayruns serve is already running (pid %d, %s): `rayruns stop --pid-file %s` first",
            running.pid,
            pid_file.path,
            pid_file.path,
        )
    return running is not None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def open_to_network(host: str, settings: Settings) -> str | None:
    """Why serving on `host` would expose an open server, or None when it would not."""
    if is_loopback(host):
        return None
    database = open_database(settings.actors)
    try:
        store = database.key_store()
    except RuntimeError as exc:  # PostgreSQL unreachable, or its driver not installed
        return f"refusing to listen on {host}: cannot tell whether an API key exists: {exc}"
    try:
        if store.any_active():
            return None
    finally:
        store.close()
    return (
        f"refusing to listen on {host}: no API key exists, so anyone who reaches the port could"
        " spend the provider keys and read every run. Create one with `rayruns keys add NAME`"
        f" (database {database.where}), listen on 127.0.0.1, or pass"
        " --insecure to serve without keys anyway."
    )


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: `rayruns stop` runs first on every `ray up` and needs none of this.
    import ray
    from ray import serve

    from rayruns.actors.client import RegistryClient, RegistryFailed
    from rayruns.actors.placement import init_ray
    from rayruns.serve_app.app import deployment

    pid_file = _pid_file(args, settings)
    if _already_running(pid_file):
        return 1
    # "local" forces a fresh local Ray instead of joining whatever this machine runs.
    init_ray(args.address or "local", settings.actors)
    pid_file.write(os.getpid())
    stop = threading.Event()
    cluster_gone = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C or SIGTERM during cleanup: leave now
            log.error("signal %d during shutdown: exiting at once", signum)
            pid_file.remove(os.getpid())
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    def on_cluster_gone() -> None:
        cluster_gone.set()
        stop.set()

    watch = ClusterWatch(ray.get_runtime_context().gcs_address, on_gone=on_cluster_gone)
    watch.start()
    try:
        try:
            RegistryClient.connect(settings.actors, settings.providers).wait_ready()
        except RegistryFailed as exc:  # its database is another registry's: say whose, and stop
            sys.stderr.write(f"rayruns serve: error: {exc}\n")
            return 1
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": settings.serve.host, "port": settings.serve.port},
        )
        serve.run(deployment(settings), name=settings.serve.app_name, route_prefix="/")
        log.info("rayruns is serving on http://%s:%d", settings.serve.host, settings.serve.port)
        stop.wait()
        log.info("stopping")
    finally:
        watch.stop()
        if cluster_gone.is_set():  # Ray may end this process itself once its raylet is gone
            pid_file.remove(os.getpid())
        clean = True
        if not cluster_gone.is_set():  # with the cluster gone there is nothing left to delete

            def cleanup() -> None:
                if args.address is None:
                    serve.shutdown()  # type: ignore[no-untyped-call]
                else:
                    serve.delete(settings.serve.app_name)

            clean = _within(SERVE_CLEANUP_TIMEOUT_S, "Serve cleanup", cleanup)
        clean = _within(RAY_SHUTDOWN_TIMEOUT_S, "ray.shutdown", ray.shutdown) and clean
        pid_file.remove(os.getpid())
        if not clean:
            logging.shutdown()
            os._exit(1)  # skip interpreter exit: Ray's atexit hooks would wait on it again
    return 1 if cluster_gone.is_set() else 0


def detach_command(argv: Sequence[str], args: argparse.Namespace, settings: Settings) -> int:
    pid_file = _pid_file(args, settings)
    if _already_running(pid_file):
        return 1
    serve_argv = [a for a in argv if a != "--detach"]
    if args.pid_file is None:  # the child must write where `rayruns stop` will look
        serve_argv += ["--pid-file", str(pid_file.path)]
    return start_detached(
        serve_argv,
        log_file=args.log_file,
        pid_file=pid_file,
        url=health_url(settings.serve.host, settings.serve.port),
        ready_timeout_s=args.ready_timeout,
        stop_timeout_s=STOP_TIMEOUT_S,
    )


def stop_command(args: argparse.Namespace, settings: Settings) -> int:
    pid_file = _pid_file(args, settings)
    outcome = pid_file.stop(args.timeout)
    log.info("rayruns serve (%s): %s", pid_file.path, outcome)
    return 0


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="read settings (RAYRUNS_*, provider keys) from NAME=value lines; "
        "parsed, never run as shell; the environment wins",
    )
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument(
        "--pid-file",
        type=Path,
        default=None,
        help="the server's pid file (default ~/.rayruns/serve-PORT.pid)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayruns", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the HTTP/SSE server")
    serve_p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    _add_server_options(serve_p)
    serve_p.add_argument(
        "--address", default=None, help="join this Ray cluster (default: start a local Ray)"
    )
    serve_p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host while no API key exists (anyone can use the server)",
    )
    serve_p.add_argument(
        "--detach",
        action="store_true",
        help="run in the background; return once /healthz answers, or fail with the log's tail",
    )
    serve_p.add_argument(
        "--log-file",
        type=Path,
        default=Path("~/.rayruns/serve.log"),
        help="with --detach: the server's log (default ~/.rayruns/serve.log)",
    )
    serve_p.add_argument(
        "--ready-timeout",
        type=float,
        default=180.0,
        help="with --detach: seconds to wait for /healthz (default 180)",
    )
    stop_p = sub.add_parser("stop", help="stop the server of a pid file (SIGTERM, then SIGKILL)")
    _add_server_options(stop_p)
    stop_p.add_argument(
        "--timeout",
        type=float,
        default=STOP_TIMEOUT_S,
        help=f"seconds to wait before SIGKILL (default {STOP_TIMEOUT_S:.0f})",
    )
    add_batch_parser(sub)
    add_keys_parser(sub)
    return parser


def load_settings(args: argparse.Namespace) -> Settings | str:
    """The settings, or why they cannot be read."""
    env_file: Path | None = getattr(args, "env_file", None)
    if env_file is not None:
        env_file = env_file.expanduser()
        if not env_file.is_file():
            return f"--env-file {env_file}: no such file"
    try:
        settings = Settings.from_env(env_file)
    except ValidationError as exc:
        return f"bad settings: {exc}"
    if getattr(args, "host", None):
        settings.serve.host = args.host
    if getattr(args, "port", None):
        settings.serve.port = args.port
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    settings = load_settings(args)
    if isinstance(settings, str):
        log.error("%s", settings)
        return 2
    if args.command == "serve":
        # Before Ray starts (or a detached child is spawned): a refusal costs nothing and says why.
        refusal = None if args.insecure else open_to_network(settings.serve.host, settings)
        if refusal is not None:
            sys.stderr.write(f"rayruns serve: {refusal}\n")
            return 2
        if args.detach:
            return detach_command(argv, args, settings)
        return serve_command(args, settings)
    if args.command == "stop":
        return stop_command(args, settings)
    if args.command == "batch":
        return batch_command(args, settings)
    if args.command == "keys":
        return keys_command(args, settings.actors)
    raise AssertionError(args.command)
