"""Properties of the quota stores: the Redis store (Lua) and the in-process store give identical answers
to identical operation sequences, and the sliding window is exact over arbitrary arrival times."""
from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.quota.limits import TEAM_SCOPE, QuotaLimits, Scope, ScopeKind, ScopeLimits
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.periods import periods_at
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.store import AdmitRequest, ExtendRequest, SettleMode, Settlement
from quota_support import FakeClock, delete_prefix, redis_url, require_redis, unique_prefix

URL = redis_url(1)
T0 = dt.datetime(2026, 1, 31, 23, 58, 30, tzinfo=dt.timezone.utc).timestamp()  # a day and a month end ahead
MODEL = Scope(ScopeKind.MODEL, "m")
# Each set makes a different limit the one that binds first.
LIMIT_SETS = [
    (ScopeLimits(TEAM_SCOPE, QuotaLimits(requests_per_minute=3)),),
    (ScopeLimits(TEAM_SCOPE, QuotaLimits(tokens_per_minute=300)),),
    (
        ScopeLimits(TEAM_SCOPE, QuotaLimits(tokens_per_day=300, tokens_per_month=600)),
        ScopeLimits(MODEL, QuotaLimits(max_concurrent=2)),
    ),
    (ScopeLimits(TEAM_SCOPE, QuotaLimits(requests_per_minute=4, tokens_per_minute=300, max_concurrent=3, tokens_per_day=300)),),
]
STEPS = [0.0, 0.000001, 0.5, 1.0, 7.0, 29.0, 59.999999, 60.0, 61.0, 600.0]

# Reservations that land exactly on, one under and one over the limits above.
RESERVES = [0, 1, 2, 50, 99, 100, 101, 150, 199, 200, 299, 300, 301]
admit_op = st.tuples(st.just("admit"), st.integers(0, len(LIMIT_SETS) - 1), st.sampled_from(RESERVES))
settle_op = st.tuples(
    st.just("settle"), st.integers(0, 50), st.sampled_from(RESERVES), st.sampled_from([0, 1, 50, 100]),
    st.sampled_from(list(SettleMode)),
)
extend_op = st.tuples(st.just("extend"), st.integers(0, 50), st.sampled_from(RESERVES))
advance_op = st.tuples(st.just("advance"), st.sampled_from(STEPS))
ops_strategy = st.lists(st.one_of(admit_op, admit_op, admit_op, settle_op, extend_op, advance_op), min_size=15, max_size=60)


async def _replay(store, clock: FakeClock, ops) -> list:
    """Run ops against a store; returns every observable answer."""
    out, admitted = [], []
    for op in ops:
        if op[0] == "advance":
            clock.advance(op[1])
            continue
        if op[0] == "admit":
            scopes, reserve = LIMIT_SETS[op[1]], op[2]
            rid = f"{len(out):032x}"
            r = await store.admit(AdmitRequest("team", rid, reserve, "m", scopes, 90.0))
            out.append(("admit", r))
            if r.admitted:
                admitted.append((rid, scopes, r, reserve))
            continue
        if not admitted:
            continue
        rid, limits, r, reserve = admitted[op[1] % len(admitted)]
        if op[0] == "extend":  # by a step from RESERVES over what it was admitted with (0: a repeat)
            out.append(("extend", await store.extend(ExtendRequest("team", rid, reserve + op[2], limits))))
            continue
        s = Settlement("team", rid, tuple(item.scope for item in limits), r.day, r.month, "m", op[2], op[3], op[4])
        out.append(("settle", await store.settle(s)))
    out.append(("usage", await store.usage("team", dt.date(2026, 1, 31), dt.date(2026, 2, 2))))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy)
def test_redis_and_in_process_stores_answer_identically(ops):
    require_redis(URL)
    prefix = unique_prefix("eqv")

    async def run() -> tuple[list, list]:
        mem_clock, redis_clock = FakeClock(T0), FakeClock(T0)
        memory = InMemoryQuotaStore(clock=mem_clock, settle_grace_s=10**9)
        shared = RedisQuotaStore(aioredis.Redis.from_url(URL), key_prefix=prefix, clock=redis_clock)
        try:
            return await _replay(memory, mem_clock, ops), await _replay(shared, redis_clock, ops)
        finally:
            await shared.aclose()

    try:
        from_memory, from_redis = asyncio.run(run())
    finally:
        delete_prefix(URL, prefix)
    assert from_redis == from_memory


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.sampled_from([0.0, 0.001, 0.3, 1.0, 5.0, 14.999, 15.0, 59.999999, 60.0]), min_size=1, max_size=60))
def test_sliding_window_is_exact_for_any_arrival_times(gaps):
    """Admitted never exceed the limit in any 60 s window, and every refusal happened with the window full."""
    limit = 5
    clock = FakeClock(T0)
    store = InMemoryQuotaStore(clock=clock)
    admitted_at, refused_at = [], []

    async def run() -> None:
        for gap in gaps:
            clock.advance(gap)
            rid = uuid.uuid4().hex
            scopes = (ScopeLimits(TEAM_SCOPE, QuotaLimits(requests_per_minute=limit)),)
            r = await store.admit(AdmitRequest("t", rid, 0, None, scopes, 60.0))
            # The instant exactly as the store saw it (it truncates to whole microseconds).
            (admitted_at if r.admitted else refused_at).append(int(clock.now * 1_000_000))

    asyncio.run(run())
    window = 60_000_000
    for start in admitted_at:  # any window [start, start + 60 s) that begins at an admission
        assert sum(start <= t < start + window for t in admitted_at) <= limit
    for t in refused_at:
        assert sum(t - window < a <= t for a in admitted_at) == limit


def test_lua_calendar_arithmetic_matches_python_across_four_centuries():
    """Day and month ids and the time to the next UTC midnight and month, Lua against Python."""
    require_redis(URL)
    prefix = unique_prefix("cal")
    instants = [
        dt.datetime(y, m, d, hh, mm, tzinfo=dt.timezone.utc).timestamp()
        for (y, m, d, hh, mm) in [
            (1970, 1, 1, 0, 0), (1999, 12, 31, 23, 59), (2000, 2, 29, 12, 0), (2024, 2, 28, 23, 59),
            (2025, 12, 31, 23, 59), (2026, 4, 30, 0, 0), (2100, 2, 28, 23, 59), (2100, 3, 1, 0, 0),
            (2399, 12, 31, 23, 59),
        ]
    ] + [T0 + k * 86_399.123457 for k in range(0, 4000, 97)]

    async def run() -> None:
        clock = FakeClock(0)
        store = RedisQuotaStore(aioredis.Redis.from_url(URL), key_prefix=prefix, clock=clock)
        try:
            for i, instant in enumerate(instants):
                clock.now = instant
                expected = periods_at(int(instant * 1_000_000))
                budget = (ScopeLimits(TEAM_SCOPE, QuotaLimits(tokens_per_day=1, tokens_per_month=2)),)
                team = f"t{i}"
                r = await store.admit(AdmitRequest(team, uuid.uuid4().hex, 1, None, budget, 60.0))
                assert (r.day, r.month) == (expected.day, expected.month), instant
                await store.settle(Settlement(team, "0" * 32, (TEAM_SCOPE,), r.day, r.month, None, 1, 0, SettleMode.USAGE_ONLY))
                day_refusal = await store.admit(AdmitRequest(team, uuid.uuid4().hex, 1, None, budget, 60.0))
                assert round(day_refusal.rejection.retry_after_s * 1_000_000) == expected.day_end_us
                await store.settle(Settlement(team, "0" * 32, (TEAM_SCOPE,), r.day, r.month, None, 0, 1, SettleMode.USAGE_ONLY))
                month_only = (ScopeLimits(TEAM_SCOPE, QuotaLimits(tokens_per_month=2)),)
                month_refusal = await store.admit(AdmitRequest(team, uuid.uuid4().hex, 1, None, month_only, 60.0))
                assert round(month_refusal.rejection.retry_after_s * 1_000_000) == expected.month_end_us
        finally:
            await store.aclose()

    try:
        asyncio.run(run())
    finally:
        delete_prefix(URL, prefix)
