"""ASGI middleware: a console session cookie becomes the credential it stands for; CSRF and headers.

For a request to ``/admin``, ``/audit`` or ``/console`` that carries no ``Authorization`` header but
the console's cookie of a live session, the session's credential is added as ``Authorization: Bearer ...``: the route then authenticates and
authorizes exactly as for an API call. A request that changes something (any method but GET, HEAD and
OPTIONS) must also carry the session's CSRF token in ``x-csrf-token``, and must not come from another
site (``Sec-Fetch-Site`` / ``Origin``); otherwise it is refused with 403 ``csrf_failed`` before any route
runs. Pages under ``/console`` carry a strict Content-Security-Policy and are never cached.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable
from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.console.sessions import COOKIE, SessionStore, SessionStoreUnavailable
from gateway.http.error_handlers import refuse_before_app

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = b"x-csrf-token"
CONSOLE_PREFIX = "/console"
# where the cookie stands for its credential: the console and the APIs it calls (never /v1)
SESSION_PREFIXES = ("/admin", "/audit", CONSOLE_PREFIX)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def cookie_value(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == b"cookie":
            jar = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed cookie header is no session
                continue
            if name in jar:
                return jar[name].value
    return None


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def same_origin(headers: list[tuple[bytes, bytes]], public_origin: str | None = None) -> bool:
    """False when the browser says the request comes from another site (or another origin). With the
    console's public origin configured, ``Origin`` must be exactly it (scheme, host and port); else its
    host must be the request's ``Host``."""
    site = header(headers, b"sec-fetch-site")
    if site is not None and site != "same-origin":
        return False
    origin = header(headers, b"origin")
    if origin is not None:
        if public_origin is not None:
            return origin == public_origin
        return origin.split("://", 1)[-1] == header(headers, b"host")
    return True


class ConsoleSessions:
    """ASGI middleware; ``sessions`` is the gateway's SessionStore (shared with the console routes)."""

    def __init__(self, app: ASGIApp, sessions: SessionStore, public_origin: str | None = None) -> None:
        self.app = app
        self.sessions = sessions
        self.public_origin = public_origin

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http" or not any(_under(scope["path"], p) for p in SESSION_PREFIXES):
            # /v1 and the rest: the inner app's awaitable itself, no frame of this class on the await chain
            return self.app(scope, receive, send)
        return self._session_area(scope, receive, send)

    async def _session_area(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = list(scope["headers"])
        path = scope["path"]
        is_console = _under(path, CONSOLE_PREFIX)
        if header(headers, b"authorization") is None:
            try:
                session = await self.sessions.get(cookie_value(headers, COOKIE))
            except SessionStoreUnavailable as exc:
                await refuse_before_app(scope, receive, _with_security_headers(send) if is_console else send, exc)
                return
            if session is not None:
                if scope["method"] not in SAFE_METHODS:
                    if not same_origin(headers, self.public_origin) or not session.csrf_matches(header(headers, CSRF_HEADER)):
                        await _refuse(send, is_console)
                        return
                headers.append((b"authorization", f"Bearer {session.credential}".encode()))
                if session.team_choice is not None:
                    headers = [(k, v) for k, v in headers if k != b"x-ward-team"]
                    headers.append((b"x-ward-team", session.team_choice.encode()))
                scope = {**scope, "headers": headers, "ward.console_session": session}
        await self.app(scope, receive, _with_security_headers(send) if is_console else send)


def _with_security_headers(send: Send) -> Send:
    """``send`` adding the console's security headers to a response that lacks them."""

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


async def _refuse(send: Send, is_console: bool) -> None:
    body = json.dumps({"error": {"message": "The request lacks the console's CSRF token or comes from another site.",
                                 "type": "permission_error", "param": None, "code": "csrf_failed"}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if is_console:
        headers += SECURITY_HEADERS
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
