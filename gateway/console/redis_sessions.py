"""Console sessions in Redis, shared by every gateway replica (the quota store's Redis).

Redis never holds a usable credential: a session is stored under a digest of its id, and its
credential is sealed (AES-GCM) with a key derived from the id, which only the browser's cookie holds.
Expiry is Redis's own (the idle lifetime, capped by what is left of the absolute one).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.exceptions import RedisError

from gateway.console.sessions import Session, SessionStoreUnavailable, new_session

PREFIX = "ward:console:"


def _digest(secret: str) -> str:
    return hashlib.sha256(b"ward-console-id:" + secret.encode()).hexdigest()


def _key(session_id: str) -> bytes:
    return hashlib.sha256(b"ward-console-seal:" + session_id.encode()).digest()


def seal(session_id: str, text: str) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(_key(session_id)).encrypt(nonce, text.encode(), None)).decode()


def unseal(session_id: str, sealed: str) -> str:
    raw = base64.b64decode(sealed)
    return AESGCM(_key(session_id)).decrypt(raw[:12], raw[12:], None).decode()


@contextmanager
def _reachable() -> Iterator[None]:
    """Redis down or timing out is the console's 503, not a crash of every request with a cookie."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise SessionStoreUnavailable() from exc


class RedisSessions:
    def __init__(self, url: str, ttl_s: float, idle_s: float, *, timeout_s: float = 1.0, clock=time.time):
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.clock = clock
        self.redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def _expiry_ms(self, session: Session, now: float) -> int:
        left = min(self.idle_s, self.ttl_s - (now - session.created))
        return max(1, int(left * 1000))

    async def create(self, credential: str, subject: str, team: str, method: str) -> Session:
        session = new_session(credential, subject, team, method, self.clock())
        await self.update(session)
        return session

    async def update(self, session: Session) -> None:
        stored = {**asdict(session), "id": None, "credential": seal(session.id, session.credential)}
        with _reachable():
            await self.redis.set(PREFIX + "session:" + _digest(session.id), json.dumps(stored),
                                 px=self._expiry_ms(session, self.clock()))

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        key = PREFIX + "session:" + _digest(session_id)
        with _reachable():
            raw = await self.redis.get(key)
        if raw is None:
            return None
        stored = json.loads(raw)
        try:
            credential = unseal(session_id, stored["credential"])
        except Exception:  # not sealed with this id's key: not this session
            return None
        session = Session(**{**stored, "id": session_id, "credential": credential})
        now = self.clock()
        with _reachable():
            if now - session.created > self.ttl_s:
                await self.redis.delete(key)
                return None
            session.last_seen = now
            await self.redis.pexpire(key, self._expiry_ms(session, now))
        return session

    async def end(self, session_id: str) -> Session | None:
        session = await self.get(session_id)
        with _reachable():
            await self.redis.delete(PREFIX + "session:" + _digest(session_id))
        return session

    async def save_login(self, state: str, login: dict[str, Any], ttl_s: float) -> None:
        with _reachable():
            await self.redis.set(PREFIX + "login:" + _digest(state), json.dumps(login), px=int(ttl_s * 1000))

    async def take_login(self, state: str) -> dict[str, Any] | None:
        with _reachable():
            raw = await self.redis.getdel(PREFIX + "login:" + _digest(state))
        return json.loads(raw) if raw is not None else None

    async def shutdown(self) -> None:
        await self.redis.aclose()
