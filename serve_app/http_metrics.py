"""The ingress's answers counted by status code (`rayruns_http_responses`, actors/metrics.py)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rayruns.actors.metrics import http_metrics


class CountResponses:
    """Outermost middleware: every answer is counted once, whichever layer produced it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.responses = http_metrics().responses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.responses.inc(tags={"status": str(message["status"])})
            await send(message)

        await self.app(scope, receive, counting_send)
