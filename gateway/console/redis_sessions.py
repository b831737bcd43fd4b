"""Console sessions in Redis, shared by every gateway replica (the quota store's Redis).

Redis never holds a usable credential: a session is stored under a digest of its id, and its
credential is sealed (AES-GCM) with a key derived from the id, which only the browser's cookie holds.
Expiry is Redis's own (the idle lifetime, capped by what is left of the absolute one).

The logins in flight, which anyone may start, are bounded: one hash (state digest -> login) and one
sorted set (state digest -> expiry), changed together by Lua scripts. Keeping a login drops the expired
ones and then the oldest beyond ``max_pending_sign_ins``, and gives both keys the lifetime of the
newest login, so however many callers start sign-ins, Redis holds at most that many, and nothing once
they have all expired.
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

# KEYS: the logins (HASH digest -> JSON), their expiries (ZSET digest -> us). ARGV: now (us), digest,
# login, lifetime (us), the most logins kept. Returns how many were dropped to make room.
# A login expires no earlier than the one kept before it (1 us later on a tie), so the set's order is
# the order of arrival and ZPOPMIN drops the oldest, as the in-memory store does.
_SAVE_LOGIN = """
local now, ttl, most = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
local expires = now + ttl
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] then expires = math.max(expires, tonumber(last[2]) + 1) end
local function drop(digests)
  for i = 1, #digests, 500 do
    redis.call('HDEL', KEYS[1], unpack(digests, i, math.min(i + 499, #digests)))
  end
end
drop(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now))
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], expires, ARGV[2])
local over = redis.call('ZCARD', KEYS[2]) - most
if over > 0 then
  local popped, oldest = redis.call('ZPOPMIN', KEYS[2], over), {}
  for i = 1, #popped, 2 do oldest[#oldest + 1] = popped[i] end
  drop(oldest)
end
if redis.call('HLEN', KEYS[1]) > redis.call('ZCARD', KEYS[2]) then
  -- a login without its expiry (only if Redis evicted a key under memory pressure): start afresh
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], expires, ARGV[2])
end
local left = math.max(1, math.ceil((expires - now) / 1000))
redis.call('PEXPIRE', KEYS[1], left)
redis.call('PEXPIRE', KEYS[2], left)
return math.max(over, 0)
"""

# KEYS as above. ARGV: now (us), digest. The login, removed, or nil (unknown or expired).
_TAKE_LOGIN = """
local expires = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not expires then return false end
local login = redis.call('HGET', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
if tonumber(expires) <= tonumber(ARGV[1]) then return false end
return login
"""


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
    def __init__(self, url: str, ttl_s: float, idle_s: float, *, max_pending_sign_ins: int = 10_000,
                 key_prefix: str = PREFIX, timeout_s: float = 1.0, clock=time.time):
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.max_pending_sign_ins = max_pending_sign_ins
        self.prefix = key_prefix
        self.clock = clock
        self.redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._logins = [key_prefix + "login", key_prefix + "login:by_expiry"]
        self._save_login = self.redis.register_script(_SAVE_LOGIN)
        self._take_login = self.redis.register_script(_TAKE_LOGIN)

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
            await self.redis.set(self.prefix + "session:" + _digest(session.id), json.dumps(stored),
                                 px=self._expiry_ms(session, self.clock()))

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        key = self.prefix + "session:" + _digest(session_id)
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
            await self.redis.delete(self.prefix + "session:" + _digest(session_id))
        return session

    def _now_us(self) -> int:
        return int(self.clock() * 1_000_000)

    async def save_login(self, state: str, login: dict[str, Any], ttl_s: float) -> None:
        args = [self._now_us(), _digest(state), json.dumps(login), max(1, int(ttl_s * 1_000_000)),
                self.max_pending_sign_ins]
        with _reachable():
            await self._save_login(keys=self._logins, args=args)

    async def take_login(self, state: str) -> dict[str, Any] | None:
        with _reachable():
            raw = await self._take_login(keys=self._logins, args=[self._now_us(), _digest(state)])
        return json.loads(raw) if raw is not None else None

    async def pending_sign_ins(self) -> int:
        with _reachable():
            return int(await self.redis.zcard(self._logins[1]))

    async def shutdown(self) -> None:
        await self.redis.aclose()
