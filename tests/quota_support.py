"""Helpers for tests of the quota layer and of the gateway around it: a clock to move by hand, a
private redis-server to stop and start, cleanup of a key prefix, and the store-contract fixture that
runs a test on both stores."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from gateway.quota.limits import TEAM_SCOPE, QuotaLimits, Scope, ScopeKind, ScopeLimits
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.store import AdmitRequest, AdmitResult, ExtendRequest, ExtendResult, SettleMode, Settlement
from ports import free_port

TEST_REDIS_URL = os.environ.get("WARD_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CONTRACT_DB = 1  # the Redis database of the store-contract tests
CONTRACT_T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.timezone.utc).timestamp()
KEY = Scope(ScopeKind.KEY, "key-1")
MODEL = Scope(ScopeKind.MODEL, "llama-3.1-8b")


class FakeClock:
    """Seconds since the epoch that only move when told to."""

    def __init__(self, start: float):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def redis_url(db: int) -> str:
    return f"{TEST_REDIS_URL.rstrip('/')}/{db}"


def require_redis(url: str) -> None:
    """Raise (so the test fails, never skips) when the Redis at ``url`` does not answer."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(f"Redis at {url} is required for this test and did not answer: {exc}") from exc
    finally:
        client.close()


def unique_prefix(area: str = "test") -> str:
    return f"ward:quota:{area}-{uuid.uuid4().hex[:10]}"


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix``; returns how many."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        client.close()


class PrivateRedis:
    """A redis-server of our own on a free local port, to stop (kill), freeze and start again.

    Data lives in an append-only file fsynced on every write, so a restart keeps what was written.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ward-quota-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is required for this test")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (calls time out)."""
        self._running().send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._running().send_signal(signal.SIGCONT)

    def _running(self) -> subprocess.Popen:
        if self.proc is None:
            raise RuntimeError("the private redis-server is not running")
        return self.proc

    def close(self) -> None:
        if self.proc is not None:
            self.thaw()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(params=["memory", "redis"], name="env")
async def store_env(request):
    """(store, clock) with the clock at CONTRACT_T0, once per store; a fresh key prefix per test for Redis."""
    clock = FakeClock(CONTRACT_T0)
    if request.param == "memory":
        yield InMemoryQuotaStore(clock=clock), clock
        return
    url = redis_url(CONTRACT_DB)
    require_redis(url)
    prefix = unique_prefix("sem")
    store = RedisQuotaStore(aioredis.Redis.from_url(url), key_prefix=prefix, clock=clock)
    try:
        yield store, clock
    finally:
        await store.aclose()
        delete_prefix(url, prefix)


class Team:
    """Drives one team against a store: admit with given limits, extend and settle what was admitted."""

    def __init__(self, store, name: str = "emergency", ttl_s: float = 300.0):
        self.store, self.name, self.ttl_s = store, name, ttl_s
        self.admitted: dict[str, AdmitResult] = {}
        self.limits: dict[str, tuple[ScopeLimits, ...]] = {}

    async def admit(self, reserve: int = 0, model_name: str | None = None, **scopes: QuotaLimits) -> tuple[str, AdmitResult]:
        items = [ScopeLimits(TEAM_SCOPE, scopes.get("team", QuotaLimits()))]
        if "key" in scopes:
            items.append(ScopeLimits(KEY, scopes["key"]))
        if "model" in scopes:
            items.append(ScopeLimits(MODEL, scopes["model"]))
        rid = uuid.uuid4().hex
        result = await self.store.admit(AdmitRequest(self.name, rid, reserve, model_name, tuple(items), self.ttl_s))
        if result.admitted:
            self.admitted[rid] = result
            self.limits[rid] = tuple(items)
        return rid, result

    async def extend(self, rid: str, total: int) -> ExtendResult:
        """Raise ``rid`` to ``total`` under the limits it was admitted with."""
        return await self.store.extend(ExtendRequest(self.name, rid, total, self.limits[rid]))

    async def settle(self, rid: str, prompt: int, completion: int = 0, mode=SettleMode.SETTLE, model: str | None = None) -> bool:
        r = self.admitted[rid]
        scopes = tuple(item.scope for item in self.limits[rid])
        return await self.store.settle(Settlement(self.name, rid, scopes, r.day, r.month, model, prompt, completion, mode))
