"""The outermost layer of the app: an unexpected error never costs the client its connection.

Starlette's ServerErrorMiddleware answers an unhandled exception with the app's 500 handler (the
OpenAI-shaped ``internal_error``) and then raises the exception again, for the server to log. uvicorn
closes the connection of any app that raises, so a keep-alive client's *next* request on it fails
with ECONNRESET although its first one got a complete answer. :class:`ErrorBoundary` sits outside
ServerErrorMiddleware and stops that exception once the answer is complete.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("ward.gateway")

_FALLBACK_BODY = (
    b'{"error":{"message":"The gateway failed to process the request.","type":"server_error",'
    b'"param":null,"code":"internal_error"}}'
)


class ErrorBoundary:
    """Keeps exceptions that escape the app away from the server once their answer was sent.

    - answer complete (the 500 handler ran): the exception stops here; the connection stays usable;
    - answer started but cut short (a stream): the exception goes on, so the server closes the
      connection and the client sees a truncated body, not a complete-looking one;
    - nothing sent (the 500 handler itself failed): a minimal OpenAI-shaped 500 is sent here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = complete = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, complete
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if complete:
                return  # the handler answered (and logged) it
            if started:
                raise
            log.exception("unhandled error on %s, and its error handler failed", scope.get("path"))
            await _send_fallback_500(send)


async def _send_fallback_500(send: Send) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_FALLBACK_BODY)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": _FALLBACK_BODY, "more_body": False})


class GatewayApp(FastAPI):
    """FastAPI with the :class:`ErrorBoundary` around its whole middleware stack, and the routes in
    ``direct_routes`` (path -> route of a router included without prefix or dependencies of its own)
    called through :class:`~gateway.http.fast_lane.FastLane` where the router would be."""

    direct_routes: Mapping[str, APIRoute] = MappingProxyType({})  # set per app by create_app

    def build_middleware_stack(self) -> ASGIApp:
        from gateway.http.fast_lane import FastLane

        router = self.router
        # FastAPI builds its stack around ``self.router``: the lane takes the router's place for the
        # build only (routes, lifespan and url_path_for keep using the router itself).
        if self.direct_routes:
            self.router = FastLane(router, dict(self.direct_routes))  # type: ignore[assignment]
        try:
            return ErrorBoundary(super().build_middleware_stack())
        finally:
            self.router = router
