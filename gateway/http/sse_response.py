"""The HTTP response for a streamed generation: text/event-stream over an EventStream."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.serving.sse import EventStream


class EventStreamResponse(Response):
    """Sends an EventStream's events; stops when the client disconnects.

    The stream's ``close`` runs after the response ends however it ends, even if the events never
    started (a client gone before the headers were sent), so the worker call is always released.
    """

    media_type = "text/event-stream"

    def __init__(self, stream: EventStream, *, headers: Mapping[str, str] | None = None) -> None:
        self.stream = stream
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                try:
                    await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                    async for chunk in self.stream.events:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                except OSError:
                    pass  # the connection is gone (servers on ASGI spec 2.4 say so this way)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.events.aclose()
                await self.stream.close()

    @staticmethod
    async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                scope.cancel()
                return
