"""Console sessions: an opaque random id in the cookie, the credential kept by the gateway.

A session holds the credential the browser signed in with (an API key, or the identity provider's
access token) and a CSRF token. Nothing else: the caller's team and roles are worked out again on every
request from that credential, so a revoked key or an expired token ends the console's rights at once.

Two stores with one interface: ``MemorySessions`` (one gateway process: a restart signs everybody out)
and ``gateway.console.redis_sessions.RedisSessions`` (every gateway sharing the quota Redis, so any
replica serves any session). Both also keep the OIDC logins in flight (state -> PKCE verifier, nonce),
which anyone may start: at most ``max_pending_sign_ins`` of them, the oldest going first when a new one
comes, each for its own short lifetime.
"""
from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.http.errors import ServiceUnavailable

COOKIE = "ward_console"


class SessionStoreUnavailable(ServiceUnavailable):
    """503: the shared session store (Redis) cannot be reached; the browser may retry shortly."""

    def __init__(self) -> None:
        super().__init__("The console's session store is unavailable; try again shortly.",
                         code="session_store_unavailable", retry_after_s=5)


@dataclass
class Session:
    id: str
    credential: str
    subject: str
    team: str
    method: str  # api_key or oidc
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    # a provider's token that names several Ward teams: the ones it names, and the one chosen (sent as
    # the API's team header, which the gateway checks against the token on every request)
    teams: list[str] = field(default_factory=list)
    team_choice: str | None = None

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


def new_session(credential: str, subject: str, team: str, method: str, now: float) -> Session:
    return Session(secrets.token_urlsafe(32), credential, subject, team, method, created=now, last_seen=now)


class SessionStore(Protocol):
    """Every method may raise SessionStoreUnavailable."""

    ttl_s: float
    idle_s: float
    max_pending_sign_ins: int

    async def create(self, credential: str, subject: str, team: str, method: str) -> Session: ...

    async def get(self, session_id: str | None) -> Session | None:
        """The live session of a cookie value (its idle clock restarts), or None."""

    async def end(self, session_id: str) -> Session | None: ...

    async def update(self, session: Session) -> None:
        """Keeps a changed session (e.g. another team chosen)."""

    async def save_login(self, state: str, login: dict[str, Any], ttl_s: float) -> None:
        """Keeps a login in flight for ``ttl_s``; beyond ``max_pending_sign_ins`` the oldest is dropped."""

    async def take_login(self, state: str) -> dict[str, Any] | None:
        """The login started with ``state``, at most once, or None (unknown or expired)."""

    async def pending_sign_ins(self) -> int:
        """How many logins are kept (at most ``max_pending_sign_ins``; some may have expired)."""


class MemorySessions:
    """Sessions in this process, with an absolute and an idle lifetime."""

    def __init__(self, ttl_s: float, idle_s: float, max_sessions: int = 10_000, clock=time.time, *,
                 max_pending_sign_ins: int = 10_000):
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self.max_pending_sign_ins = max_pending_sign_ins
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._logins: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    async def create(self, credential: str, subject: str, team: str, method: str) -> Session:
        session = new_session(credential, subject, team, method, self.clock())
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if now - session.created > self.ttl_s or now - session.last_seen > self.idle_s:
            del self._sessions[session_id]
            return None
        session.last_seen = now
        return session

    async def end(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    async def update(self, session: Session) -> None:
        if session.id in self._sessions:
            self._sessions[session.id] = session

    async def save_login(self, state: str, login: dict[str, Any], ttl_s: float) -> None:
        now = self.clock()
        # oldest first: with one lifetime for every login, the expired ones are at the front
        while self._logins and next(iter(self._logins.values()))[0] <= now:
            self._logins.popitem(last=False)
        self._logins.pop(state, None)
        self._logins[state] = (now + ttl_s, login)
        while len(self._logins) > self.max_pending_sign_ins:
            self._logins.popitem(last=False)

    async def take_login(self, state: str) -> dict[str, Any] | None:
        found = self._logins.pop(state, None)
        if found is None or found[0] <= self.clock():
            return None
        return found[1]

    async def pending_sign_ins(self) -> int:
        return len(self._logins)

    def __len__(self) -> int:
        return len(self._sessions)
