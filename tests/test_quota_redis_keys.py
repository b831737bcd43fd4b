"""Redis key layout: every key one team's requests touch lives in one Redis Cluster slot, and no name
(team, key id, model) can reach into another's keys."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from gateway.quota.limits import TEAM_SCOPE, QuotaLimits, Scope, ScopeKind, ScopeLimits
from gateway.quota.redis_keys import RedisKeys, override_field, parse_override_field
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.store import AdmitRequest, Settlement
from quota_support import delete_prefix, redis_url, require_redis, unique_prefix

pytestmark = pytest.mark.anyio
URL = redis_url(1)
ALL_LIMITS = QuotaLimits(
    requests_per_minute=100, tokens_per_minute=10**6, max_concurrent=10, tokens_per_day=10**7, tokens_per_month=10**8
)


@pytest.mark.parametrize("team", ["ed", "team{with}braces", "a:b", "ünïcode team", "x}y{z"])
async def test_all_keys_written_for_a_team_share_one_cluster_slot(team):
    require_redis(URL)
    prefix = unique_prefix("slot")
    store = RedisQuotaStore(aioredis.Redis.from_url(URL), key_prefix=prefix)
    scopes = (
        ScopeLimits(TEAM_SCOPE, ALL_LIMITS),
        ScopeLimits(Scope(ScopeKind.KEY, "key:1{x}"), ALL_LIMITS),
        ScopeLimits(Scope(ScopeKind.MODEL, "org/model:v2"), ALL_LIMITS),
    )
    try:
        rid = uuid.uuid4().hex
        r = await store.admit(AdmitRequest(team, rid, 100, "org/model:v2", scopes, 60.0))
        assert r.admitted
        other = uuid.uuid4().hex
        await store.admit(AdmitRequest(team, other, 100, None, scopes, 60.0))
        await store.settle(Settlement(team, rid, tuple(s.scope for s in scopes), r.day, r.month, "org/model:v2", 10, 5))
        client = redis.Redis.from_url(URL)
        written = [k for k in client.scan_iter(match=f"{prefix}:*") if not k.endswith(b":overrides")]
        client.close()
        # 6 per scope for 3 scopes, the usage record, and the unsettled reservation's record.
        assert len(written) == 6 * 3 + 2
        assert len({key_slot(k) for k in written}) == 1
        assert {key_slot(k) for k in written} == {key_slot(RedisKeys(prefix).team_tag(team).encode())}
    finally:
        await store.aclose()
        delete_prefix(URL, prefix)


def test_names_are_escaped_so_different_scopes_never_share_a_key():
    keys = RedisKeys("p")
    names = ["a", "a:rpm", "a:b", "a/b", "{a}", "a%3Arpm"]
    seen: set[str] = set()
    for team in names:
        for scope in [TEAM_SCOPE] + [Scope(kind, n) for kind in (ScopeKind.KEY, ScopeKind.MODEL) for n in names]:
            for key in keys.scope_keys(team, scope):
                assert key not in seen
                seen.add(key)
            assert parse_override_field(override_field(team, scope)) == (team, scope)


def test_usage_keys_are_per_team_and_day():
    keys = RedisKeys("p")
    assert len({keys.usage("ed", "20260310"), keys.usage("ed", "20260311"), keys.usage("er", "20260310")}) == 3
    assert keys.usage("ed", dt.date(2026, 3, 10).strftime("%Y%m%d")).startswith(keys.team_tag("ed"))
