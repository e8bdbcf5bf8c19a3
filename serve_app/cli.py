"""`rayruns serve`: start (or join) Ray, run the Serve app, stop both cleanly on Ctrl-C.

`rayruns batch`: run a JSONL file of requests (serve_app/batch_cli.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence

import ray
from ray import serve

from rayruns.actors.client import RegistryClient
from rayruns.serve_app.app import deployment
from rayruns.serve_app.batch_cli import add_batch_parser, batch_command
from rayruns.serve_app.settings import Settings

log = logging.getLogger("rayruns")


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    settings.serve.host = args.host or settings.serve.host
    settings.serve.port = args.port or settings.serve.port
    # "local" forces a fresh local Ray instead of joining whatever this machine runs.
    ray.init(
        address=args.address or "local",
        namespace=settings.actors.namespace,
        include_dashboard=False,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        RegistryClient.connect(settings.actors, settings.providers).wait_ready()
        serve.start(http_options={"host": settings.serve.host, "port": settings.serve.port})
        serve.run(deployment(settings), name=settings.serve.app_name, route_prefix="/")
        log.info("rayruns is serving on http://%s:%d", settings.serve.host, settings.serve.port)
        stop.wait()
        log.info("stopping")
    finally:
        if args.address is None:
            serve.shutdown()  # type: ignore[no-untyped-call]
        else:
            serve.delete(settings.serve.app_name)
        ray.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayruns", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the HTTP/SSE server")
    serve_p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    serve_p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    serve_p.add_argument(
        "--address", default=None, help="join this Ray cluster (default: start a local Ray)"
    )
    add_batch_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    if args.command == "serve":
        return serve_command(args, settings)
    if args.command == "batch":
        return batch_command(args, settings)
    raise AssertionError(args.command)
