"""ASGI middleware: stamps each request's arrival time and refuses bodies over the size limit (413).

The limit holds on every route, before any parsing:

- a body that declares a Content-Length over the limit is answered 413 at once, before the app
  (authentication, routing, body parsing) sees the request;
- a body sent without a length (chunked) raises :class:`BodyTooLarge` from ``receive`` once it
  passes the limit. It is an ``HTTPException``, so FastAPI's body parsing lets it through instead
  of turning it into a 400, and the app's handler answers it (and reports it to the request hooks).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.error_handlers import refuse_before_app
from gateway.http.errors import RequestTooLarge
from gateway.http.plumbing import RECEIVED_KEY


class BodyTooLarge(HTTPException):
    """A request body grew past the limit while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(limit))


def too_large_message(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, whatever the route."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Returns the inner app's awaitable rather than awaiting it: no frame of this class stays on
        # the request's await chain, which every resumption (each streamed token) walks.
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        scope[RECEIVED_KEY] = time.perf_counter()
        limit = self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # Answered unread: the server discards the body afterwards, so the connection stays usable.
            error = RequestTooLarge(too_large_message(limit), code="request_too_large")
            return refuse_before_app(scope, receive, send, error)
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
