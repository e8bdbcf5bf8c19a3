"""The Ray Serve deployment and its FastAPI ingress."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from ray import serve

from rayruns.actors.client import HEAD_NODE, RegistryClient
from rayruns.actors.remote import long_lived_runtime_env
from rayruns.actors.server_tools import ToolCatalog
from rayruns.serve_app import chat_completions, session
from rayruns.serve_app.auth import KeyChecker
from rayruns.serve_app.errors import BodyLimit, error_response, install_error_handlers
from rayruns.serve_app.http_metrics import CountResponses
from rayruns.serve_app.openapi import answers, install_openapi
from rayruns.serve_app.page import mount_page
from rayruns.serve_app.runs import Runtime, router
from rayruns.serve_app.settings import ServeSettings, Settings


def build_api(
    client: RegistryClient, settings: ServeSettings, server_tools: Sequence[str] = ()
) -> FastAPI:
    """The ingress app; `server_tools` (the names `RAYRUNS_TOOLS` registers) go into the
    OpenAPI document, so that it lists the server tools a request may name."""
    api = FastAPI(title="rayruns", version="0.1.0")
    api.state.runtime = Runtime(client, settings)
    api.state.keys = KeyChecker(client, settings.auth_cache_s)
    install_error_handlers(api)
    api.include_router(router)
    api.include_router(chat_completions.router)
    api.include_router(session.router)
    install_openapi(api, chat_completions.ChatRequest, server_tools)
    mount_page(api)

    @api.get("/healthz", response_model=None, responses=answers(503))
    async def healthz() -> Any:
        try:
            await client.stats()
        except Exception as exc:
            return error_response(503, f"not ready: {type(exc).__name__}")
        return {"status": "ok"}

    api.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    api.add_middleware(CountResponses)
    return api


@serve.ingress()
class RunsIngress:
    """One replica of the HTTP edge. It owns no run: runs live in detached actors."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        _log_to_the_replica_log()
        self._client = RegistryClient.connect(settings.actors, settings.providers)

    def __serve_build_asgi_app__(self) -> FastAPI:
        tools = ToolCatalog.load(self._settings.actors.tool_modules).tools
        return build_api(self._client, self._settings.serve, sorted(tools))


def _log_to_the_replica_log() -> None:
    """rayruns' INFO records (a client that went away, a cancelled request) go where Serve's own
    replica records go; otherwise the worker's root logger drops them."""
    ours, serve_logger = logging.getLogger("rayruns"), logging.getLogger("ray.serve")
    if serve_logger.handlers and not ours.handlers:
        ours.setLevel(logging.INFO)
        for handler in serve_logger.handlers:
            ours.addHandler(handler)
        ours.propagate = False


def deployment(settings: Settings) -> Any:
    """The Serve application, sized for long-lived streams (each holds a request slot)."""
    ingress: Any = serve.deployment(RunsIngress)
    return ingress.options(
        name="RunsIngress",
        num_replicas=settings.serve.num_replicas,
        max_ongoing_requests=settings.serve.max_ongoing_requests,
        # On the head, beside the registry and the proxy: worker nodes host runs only.
        ray_actor_options={
            "num_cpus": 0,
            "resources": {HEAD_NODE: 0.001},
            "runtime_env": long_lived_runtime_env(settings.actors),
        },
        health_check_period_s=10,
    ).bind(settings)
