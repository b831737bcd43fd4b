"""ASGI middleware: stamps each request's arrival time and refuses bodies over the size limit (413)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.errors import RequestTooLarge
from gateway.http.plumbing import RECEIVED_KEY


class BodyLimitMiddleware:
    """Raises RequestTooLarge from ``receive`` once a body passes ``max_bytes`` (or declares it will),
    so the route's error handling (and the request hooks) see the rejection."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[RECEIVED_KEY] = time.perf_counter()
        limit = self.max_bytes
        declared = _content_length(scope)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            if declared is not None and declared > limit:
                raise _too_large(limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than {limit} bytes.", code="request_too_large")
