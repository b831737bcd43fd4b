"""Console sessions: an opaque random id in the cookie, the credential kept by the gateway.

A session holds the credential the browser signed in with (an API key, or the identity provider's
access token) and a CSRF token. Nothing else: the caller's team and roles are worked out again on every
request from that credential, so a revoked key or an expired token ends the console's rights at once.
Sessions live in the gateway process (a restart signs everybody out).
"""
from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

COOKIE = "ward_console"


@dataclass
class Session:
    id: str
    credential: str
    subject: str
    team: str
    method: str  # api_key or oidc
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    # the team chosen at sign-in when the provider's token names several
    team_header: str | None = None

    def csrf_matches(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionStore:
    """In-memory sessions with an absolute and an idle lifetime."""

    def __init__(self, ttl_s: float, idle_s: float, max_sessions: int = 10_000, clock=time.monotonic):
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, credential: str, subject: str, team: str, method: str, team_header: str | None = None) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), credential, subject, team, method, created=now, last_seen=now,
                          team_header=team_header)
        self._sessions[session.id] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of a cookie value (its idle clock restarts), or None."""
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

    def end(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)
