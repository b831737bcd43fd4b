"""Builds the console's routes and middleware from the gateway's settings."""
from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter

from gateway.console.middleware import ConsoleSessions
from gateway.console.oidc_login import OIDCLogin
from gateway.console.router import build_console_router
from gateway.console.sessions import MemorySessions, SessionStore
from gateway.settings import GatewaySettings


@dataclass
class Console:
    sessions: SessionStore
    routers: list[APIRouter] = field(default_factory=list)
    # (middleware class, kwargs) pairs for app.add_middleware
    middleware: list[tuple[type, dict]] = field(default_factory=list)


def build_console(settings: GatewaySettings) -> Console | None:
    """The console, or None when ``console.enabled`` is false. OIDC sign-in is offered when
    ``auth.oidc`` names a ``client_id``; API-key sign-in always. Sessions are kept in the quota
    store's Redis when there is one (every replica serves every session), else in this process."""
    options = settings.console
    if not options.enabled:
        return None
    sessions: SessionStore
    if settings.quota.redis_url and not settings.quota.redis_cluster:
        from gateway.console.redis_sessions import RedisSessions

        sessions = RedisSessions(settings.quota.redis_url, options.session_ttl_s, options.idle_timeout_s,
                                 max_pending_sign_ins=options.max_pending_sign_ins)
    else:
        sessions = MemorySessions(options.session_ttl_s, options.idle_timeout_s, options.max_sessions,
                                  max_pending_sign_ins=options.max_pending_sign_ins)
    oidc = settings.auth.oidc
    login = OIDCLogin(oidc, sessions) if oidc is not None and oidc.client_id else None
    return Console(sessions, [build_console_router(options, sessions, login)], [(ConsoleSessions, {"sessions": sessions, "public_origin": options.public_url})])
