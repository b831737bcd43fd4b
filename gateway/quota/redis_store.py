"""The quota store shared by many gateway processes: Redis, one Lua script per admit, extend and settle."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import DataError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.quota.errors import QuotaStoreError
from gateway.quota.headers import WindowState
from gateway.quota.limits import LIMIT_KINDS, QuotaLimits, Scope, ScopeLimits
from gateway.quota.periods import day_id
from gateway.quota.redis_keys import (
    RedisKeys,
    override_field,
    parse_override_field,
    parse_usage_model_field,
    usage_model_field,
)
from gateway.quota.store import (
    RATE_WINDOW_S,
    AdmitRequest,
    AdmitResult,
    ExtendRequest,
    ExtendResult,
    ExtendStatus,
    OverrideKey,
    Rejection,
    Settlement,
    UsageRecord,
)

_STORE_FAILURES = (RedisError, OSError, asyncio.TimeoutError)
_ACCT_TTL_MS = 40 * 86_400_000  # budget counters outlive the longest period (a month) by a margin


def _load_script(name: str) -> str:
    lua = resources.files("gateway.quota") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / name).read_text()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisQuotaStore:
    """QuotaStore on Redis (standalone or Cluster). Time is Redis server time unless ``clock`` is given
    (seconds since the epoch; used by tests to move time deterministically).

    The client should have short timeouts and no retries: the service's circuit breaker decides what
    happens when Redis is slow or gone (see ``from_url``).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        key_prefix: str = "ward:quota",
        clock: Callable[[], float] | None = None,
        usage_retention_days: int = 400,
        settle_grace_s: float = 86_400.0,
    ):
        self._redis = client
        self.keys = RedisKeys(key_prefix)
        self._clock = clock
        self._usage_ttl_ms = usage_retention_days * 86_400_000
        self._settle_grace_s = settle_grace_s
        self._admit = client.register_script(_load_script("admit.lua"))
        self._extend = client.register_script(_load_script("extend.lua"))
        self._settle = client.register_script(_load_script("settle.lua"))

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.25, cluster: bool = False, **kwargs: Any) -> RedisQuotaStore:
        """A store on a new client for ``url`` with ``timeout_s`` connect and read timeouts and no retries.
        ``cluster``: connect to a Redis Cluster (every key of one team shares a slot, see redis_keys)."""
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
        }
        if cluster:
            client: Any = RedisCluster.from_url(url, **options)
        else:
            client = aioredis.Redis.from_url(url, health_check_interval=0, **options)
        return cls(client, **kwargs)

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1_000_000))

    async def admit(self, request: AdmitRequest) -> AdmitResult:
        keys = [self.keys.reservation(request.team, request.reservation_id)]
        args: list[Any] = [
            self._now_arg(),
            request.reservation_id,
            request.reserve_tokens,
            int(request.ttl_s * 1_000_000),
            int(RATE_WINDOW_S * 1_000_000),
            int((request.ttl_s + self._settle_grace_s) * 1000),
            request.model or "",
        ]
        keys, args = self._add_scopes(request.team, request.scopes, keys, args)
        raw = await self._call(self._admit, keys, args)
        status = int(raw[0])
        if status == 2:
            raise ValueError(f"reservation id {request.reservation_id} was already admitted")
        return AdmitResult(
            rejection=_rejection(raw[1:6], request.scopes) if status == 0 else None,
            requests=_window(raw[8:11]),
            tokens=_window(raw[11:14]),
            day=_text(raw[6]),
            month=_text(raw[7]),
        )

    async def extend(self, request: ExtendRequest) -> ExtendResult:
        keys = [self.keys.reservation(request.team, request.reservation_id)]
        args: list[Any] = [self._now_arg(), request.reservation_id, request.reserve_tokens, int(RATE_WINDOW_S * 1_000_000)]
        keys, args = self._add_scopes(request.team, request.scopes, keys, args)
        raw = await self._call(self._extend, keys, args)
        status = _EXTEND_STATUS[int(raw[0])]
        return ExtendResult(
            status=status,
            rejection=_rejection(raw[1:6], request.scopes) if status is ExtendStatus.REFUSED else None,
            requests=_window(raw[6:9]),
            tokens=_window(raw[9:12]),
        )

    def _add_scopes(self, team: str, scopes: tuple[ScopeLimits, ...], keys: list[str], args: list[Any]) -> tuple[list[str], list[Any]]:
        """Each scope's keys after ``keys`` and its five limits (-1: none) after ``args``."""
        for item in scopes:
            keys += self.keys.scope_keys(team, item.scope)
            args += [-1 if item.limits.get(kind) is None else item.limits.get(kind) for kind in LIMIT_KINDS]
        return keys, args

    async def settle(self, settlement: Settlement) -> bool:
        team = settlement.team
        keys = [self.keys.reservation(team, settlement.reservation_id), self.keys.usage(team, settlement.day)]
        for scope in settlement.scopes:
            keys += self.keys.scope_keys(team, scope)
        args = [
            self._now_arg(),
            settlement.reservation_id,
            settlement.prompt_tokens,
            settlement.completion_tokens,
            settlement.mode.value,
            settlement.day,
            settlement.month,
            usage_model_field(settlement.model),
            self._usage_ttl_ms,
            _ACCT_TTL_MS,
        ]
        return int(await self._call(self._settle, keys, args)) == 1

    async def usage(self, team: str, first_day: dt.date, last_day: dt.date) -> list[UsageRecord]:
        days = [first_day + dt.timedelta(days=i) for i in range((last_day - first_day).days + 1)]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(self.keys.usage(team, day_id(day)))
                rows = await pipe.execute()
        except _STORE_FAILURES as exc:
            raise _store_error(exc) from exc
        records = []
        for day, row in zip(days, rows):
            by_model: dict[str, dict[str, int]] = {}
            for field, value in row.items():
                model, _, what = _text(field).rpartition("|")
                by_model.setdefault(model, {})[what] = int(value)
            for model, counts in sorted(by_model.items()):
                records.append(
                    UsageRecord(
                        day=day,
                        model=parse_usage_model_field(model),
                        requests=counts.get("r", 0),
                        prompt_tokens=counts.get("p", 0),
                        completion_tokens=counts.get("c", 0),
                    )
                )
        return records

    async def get_overrides(self) -> dict[OverrideKey, QuotaLimits]:
        raw = await self._call_client(self._redis.hgetall, self.keys.overrides())
        return {parse_override_field(_text(f)): QuotaLimits.model_validate_json(v) for f, v in raw.items()}

    async def set_override(self, team: str, scope: Scope, limits: QuotaLimits | None) -> None:
        field = override_field(team, scope)
        if limits is None:
            await self._call_client(self._redis.hdel, self.keys.overrides(), field)
        else:
            await self._call_client(self._redis.hset, self.keys.overrides(), field, json.dumps(limits.model_dump()))

    async def ping(self) -> None:
        await self._call_client(self._redis.ping)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except DataError:
            raise  # a bad argument is a bug here, not an outage
        except _STORE_FAILURES as exc:
            raise _store_error(exc) from exc

    async def _call_client(self, method: Callable[..., Any], *args: Any) -> Any:
        try:
            return await method(*args)
        except DataError:
            raise
        except _STORE_FAILURES as exc:
            raise _store_error(exc) from exc


def _store_error(exc: BaseException) -> QuotaStoreError:
    timed_out = isinstance(exc, (RedisTimeoutError, asyncio.TimeoutError))
    return QuotaStoreError(f"quota store unavailable: {exc!r}", maybe_applied=timed_out)


_EXTEND_STATUS = {1: ExtendStatus.EXTENDED, 0: ExtendStatus.REFUSED, 3: ExtendStatus.UNKNOWN}


def _rejection(values: list[Any], scopes: tuple[ScopeLimits, ...]) -> Rejection:
    """A refusal as the scripts return it: kind (1-based in LIMIT_KINDS), scope (1-based), retry_us
    (-1: never), limit, used."""
    kind, scope, retry_us, limit, used = (int(v) for v in values)
    return Rejection(
        kind=LIMIT_KINDS[kind - 1],
        scope=scopes[scope - 1].scope,
        limit=limit,
        used=used,
        retry_after_s=None if retry_us < 0 else retry_us / 1_000_000,
    )


def _window(values: list[Any]) -> WindowState | None:
    limit, remaining, reset_us = (int(v) for v in values)
    if limit < 0:
        return None
    return WindowState(limit=limit, remaining=max(0, remaining), reset_s=reset_us / 1_000_000)
