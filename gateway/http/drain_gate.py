"""ASGI middleware: counts the requests a drain waits for, and refuses new ones while draining.

Operational routes (liveness, readiness, metrics, the schema) pass untouched and uncounted:
/readyz has to say 503 during the drain, and scrapes must not hold the process up.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.error_handlers import refuse_before_app
from gateway.http.errors import ServerShuttingDown
from gateway.serving.shutdown import REFUSED_MESSAGE, ServerShutdown

OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


class DrainGate:
    def __init__(self, app: ASGIApp, shutdown: ServerShutdown) -> None:
        self.app = app
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPERATIONAL_PATHS:
            await self.app(scope, receive, send)
            return
        if self.shutdown.draining:
            error = ServerShuttingDown(REFUSED_MESSAGE)
            error.headers["connection"] = "close"  # a keep-alive client reconnects, to another replica
            await refuse_before_app(scope, receive, send, error)
            return
        with self.shutdown.tracking():
            await self.app(scope, receive, send)
