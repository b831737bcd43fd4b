"""Every answer of the admin and audit APIs carries ``x-request-id``, and every read is in the log.

``AuditedAdminReads`` is ASGI middleware around the app for the paths under ``/admin`` and ``/audit``.
When a response starts it adds the request's ``x-request-id`` (the id of its RequestContext, which the
error handlers and the caller's authentication use too) and, unless another layer recorded the request
already, appends an ``access`` entry with that id, who asked, the method, path and query, and the
status, durable before the first byte leaves. If it cannot be made durable the caller gets a 503
(``audit_unavailable``) instead of the answer: nothing an administrator reads goes unrecorded.

Who records what, so each request has its record:
- refusals and failures raised through the app's error handlers: the audit request hooks (``request``);
- reads of the audit log itself: the auditor router (``access``, with the records returned), which
  marks the request with :func:`mark_access_recorded`;
- admin changes that succeed: the service making them (``admin``, naming the same request id);
- everything else: this middleware (``access``, action ``admin.read`` or ``audit.read`` for a read,
  ``admin.attempt`` for a change a route turned down by answering directly, such as 409).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.audit.errors import AuditError
from gateway.audit.records import Actor
from gateway.auth.principal import Principal
from gateway.http.plumbing import CONTEXT_KEY, context_for
from gateway.http.request_context import RequestContext

log = logging.getLogger(__name__)

GOVERNED_PREFIXES = ("/admin", "/audit")
RECORDED_KEY = "ward.access_recorded"  # scope key: another layer wrote this request's access entry
READ_METHODS = frozenset({"GET", "HEAD"})
_REFUSED = frozenset({401, 403})


class AccessRecorder(Protocol):
    """The part of AuditLog this middleware needs."""

    async def record_access(
        self,
        who: Principal | Actor,
        action: str,
        query: dict[str, Any],
        *,
        allowed: bool,
        client_address: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> Any: ...


def is_governed_by(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def is_governed(path: str) -> bool:
    return any(is_governed_by(path, prefix) for prefix in GOVERNED_PREFIXES)


def mark_access_recorded(request: Request) -> None:
    """Tells the middleware this request's access entry is written (the auditor router reads the log)."""
    request.scope[RECORDED_KEY] = True


class AuditedAdminReads:
    """ASGI middleware; ``recorder`` is the gateway's AuditLog."""

    def __init__(self, app: ASGIApp, recorder: AccessRecorder) -> None:
        self.app = app
        self.recorder = recorder

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http" or not is_governed(scope["path"]):
            # the inner app's awaitable itself: no frame of this class stays on the request's await chain
            return self.app(scope, receive, send)
        return self._governed(scope, receive, send)

    async def _governed(self, scope: Scope, receive: Receive, send: Send) -> None:
        replaced = False

        async def send_recorded(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the app's answer was swapped for a 503: drop the rest of it
            if message["type"] == "http.response.start":
                ctx = scope.get(CONTEXT_KEY) or context_for(Request(scope))
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["x-request-id"] = ctx.request_id
                if _needs_record(scope, ctx, message["status"]):
                    try:
                        await self._record(scope, ctx, message["status"])
                    except AuditError as error:
                        log.error("admin read %s not recorded, refused: %s", ctx.request_id, error)
                        replaced = True
                        await _send_unavailable(send, ctx.request_id)
                        return
            await send(message)

        await self.app(scope, receive, send_recorded)

    async def _record(self, scope: Scope, ctx: RequestContext, status: int) -> None:
        who = ctx.principal or scope.get("state", {}).get("principal")
        if who is None:  # an answer without an authenticated caller: keep who connected, at least
            who = Actor(subject=None, team=None, auth_method=None)
        request = Request(scope)
        query = {"method": scope["method"], "path": scope["path"], "params": dict(request.query_params)}
        area = "audit" if is_governed_by(scope["path"], "/audit") else "admin"
        action = f"{area}.read" if scope["method"] in READ_METHODS else f"{area}.attempt"
        await self.recorder.record_access(
            who, action, query, allowed=status not in _REFUSED, client_address=ctx.client_address,
            http_status=status, request_id=ctx.request_id,
        )


def _needs_record(scope: Scope, ctx: RequestContext, status: int) -> bool:
    # An error raised to the app's handlers was recorded by the request hooks (Lifecycle.fail sets
    # ctx.error first); the auditor router marks the reads it recorded.
    if ctx.error is not None or scope.get(RECORDED_KEY):
        return False
    # A change that succeeded is recorded as an `admin` entry by the service that made it.
    return scope["method"] in READ_METHODS or status >= 400


async def _send_unavailable(send: Send, request_id: str) -> None:
    body = (
        b'{"error":{"message":"The audit log is unavailable; the answer was not sent. Please retry.",'
        b'"type":"server_error","param":null,"code":"audit_unavailable"}}'
    )
    await send({
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
            (b"x-request-id", request_id.encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})
