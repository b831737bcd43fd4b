"""The quota stores' contract, run against the real Redis (DB 1) and the in-process store alike, with a
clock moved by hand so window edges and UTC period boundaries are hit exactly."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest

from gateway.quota.limits import TEAM_SCOPE, LimitKind, QuotaLimits, Scope, ScopeKind
from gateway.quota.store import SettleMode, Settlement
from quota_support import KEY, MODEL, Team, store_env  # noqa: F401 - the fixture `env`: each test on both stores

pytestmark = pytest.mark.anyio


async def test_requests_per_minute_admits_exactly_the_limit_then_refuses_until_the_oldest_leaves(env):
    store, clock = env
    team, rpm = Team(store), QuotaLimits(requests_per_minute=3)
    for i in range(3):
        _, r = await team.admit(team=rpm)
        assert r.admitted and r.requests.remaining == 2 - i
        clock.advance(10)
    _, refused = await team.admit(team=rpm)  # t = 30: entries at 0, 10, 20
    assert refused.rejection.kind is LimitKind.REQUESTS_PER_MINUTE
    assert refused.rejection.retry_after_s == pytest.approx(30.0)
    assert (refused.rejection.limit, refused.rejection.used) == (3, 3)
    clock.advance(29.999999)  # 1 us before the entry of t=0 leaves the window
    assert not (await team.admit(team=rpm))[1].admitted
    clock.advance(0.000001)
    _, again = await team.admit(team=rpm)
    assert again.admitted and again.requests.remaining == 0
    assert again.requests.reset_s == pytest.approx(0.0 + 10)  # the entry of t=10 leaves next, at t=70


async def test_tokens_per_minute_reservations_are_lowered_by_settle(env):
    store, _ = env
    team, tpm = Team(store), QuotaLimits(tokens_per_minute=1000)
    a, ra = await team.admit(400, team=tpm)
    b, rb = await team.admit(400, team=tpm)
    assert ra.admitted and rb.admitted and rb.tokens.remaining == 200
    _, refused = await team.admit(400, team=tpm)
    assert refused.rejection.kind is LimitKind.TOKENS_PER_MINUTE and refused.rejection.used == 800
    assert refused.rejection.retry_after_s == pytest.approx(60.0)  # the first 400 must leave the window
    assert await team.settle(a, prompt=80, completion=20)  # used 100 of 400
    _, now_fits = await team.admit(400, team=tpm)
    assert now_fits.admitted and now_fits.tokens.remaining == 1000 - 100 - 400 - 400


async def test_a_request_larger_than_the_limit_can_never_fit(env):
    store, _ = env
    _, r = await Team(store).admit(1001, team=QuotaLimits(tokens_per_minute=1000))
    assert r.rejection.kind is LimitKind.TOKENS_PER_MINUTE and r.rejection.retry_after_s is None
    _, r = await Team(store).admit(0, team=QuotaLimits(requests_per_minute=0))
    assert r.rejection.kind is LimitKind.REQUESTS_PER_MINUTE and r.rejection.retry_after_s is None


async def test_max_concurrent_counts_live_reservations_and_expires_them_after_the_ttl(env):
    store, clock = env
    team, conc = Team(store, ttl_s=120), QuotaLimits(max_concurrent=2)
    a, _ = await team.admit(team=conc)
    await team.admit(team=conc)
    _, refused = await team.admit(team=conc)
    assert refused.rejection.kind is LimitKind.MAX_CONCURRENT and refused.rejection.retry_after_s == pytest.approx(1.0)
    await team.settle(a, prompt=10)
    assert (await team.admit(team=conc))[1].admitted
    assert not (await team.admit(team=conc))[1].admitted
    clock.advance(120)  # nobody settled: a crashed gateway must not hold the slots forever
    assert (await team.admit(team=conc))[1].admitted


async def test_day_budget_counts_settled_and_live_tokens_and_resets_at_utc_midnight(env):
    store, clock = env
    clock.now = dt.datetime(2026, 3, 10, 23, 0, tzinfo=dt.timezone.utc).timestamp()
    team, budget = Team(store), QuotaLimits(tokens_per_day=1000)
    for _ in range(3):
        rid, r = await team.admit(300, team=budget)
        assert r.admitted and r.day == "20260310" and r.month == "202603"
        await team.settle(rid, prompt=250, completion=50)
    _, refused = await team.admit(200, team=budget)  # 900 settled + 200 > 1000: wait for tomorrow
    assert refused.rejection.kind is LimitKind.TOKENS_PER_DAY
    assert refused.rejection.retry_after_s == pytest.approx(3600.0)
    live, _ = await team.admit(100, team=budget)  # exactly 1000 with this live reservation
    _, waits_on_live = await team.admit(1, team=budget)
    assert waits_on_live.rejection.retry_after_s == pytest.approx(1.0)  # live reservations may settle soon
    await team.settle(live, prompt=0, mode=SettleMode.RELEASE)
    assert (await team.admit(1, team=budget))[1].admitted
    clock.now = dt.datetime(2026, 3, 11, 0, 0, tzinfo=dt.timezone.utc).timestamp()
    _, next_day = await team.admit(999, team=budget)  # 1 live from the evening, 999 new
    assert next_day.admitted and next_day.day == "20260311"


async def test_month_budget_resets_on_the_first_of_the_next_utc_month(env):
    store, clock = env
    clock.now = dt.datetime(2028, 2, 29, 23, 59, 30, tzinfo=dt.timezone.utc).timestamp()  # leap day
    team, budget = Team(store), QuotaLimits(tokens_per_month=500)
    rid, r = await team.admit(500, team=budget)
    assert r.admitted and r.month == "202802"
    await team.settle(rid, prompt=500)
    _, refused = await team.admit(1, team=budget)
    assert refused.rejection.kind is LimitKind.TOKENS_PER_MONTH
    assert refused.rejection.retry_after_s == pytest.approx(30.0)
    clock.advance(30)
    _, r = await team.admit(500, team=budget)
    assert r.admitted and r.month == "202803" and r.day == "20280301"


async def test_a_refusal_by_one_scope_consumes_nothing_from_the_others(env):
    store, _ = env
    team = Team(store)
    limits = dict(team=QuotaLimits(requests_per_minute=5, tokens_per_minute=100), model=QuotaLimits(requests_per_minute=1))
    assert (await team.admit(10, **limits))[1].admitted
    _, refused = await team.admit(10, **limits)
    assert refused.rejection.scope == MODEL and refused.rejection.kind is LimitKind.REQUESTS_PER_MINUTE
    assert refused.requests.remaining == 0  # the tightest scope is reported
    # The team scope still has 4 requests and 90 tokens: the refusal took nothing.
    for i in range(4):
        _, r = await team.admit(10, team=limits["team"])
        assert r.admitted and r.requests.remaining == 3 - i
    assert r.tokens.remaining == 100 - 50


async def test_the_refusal_reported_is_the_one_that_keeps_the_request_out_longest(env):
    store, clock = env
    team = Team(store)
    limits = QuotaLimits(requests_per_minute=1, tokens_per_day=100)
    rid, _ = await team.admit(100, team=limits)
    await team.settle(rid, prompt=100)
    clock.advance(1)
    _, refused = await team.admit(1, team=limits)  # rpm frees in 59 s, the day budget only tomorrow
    assert refused.rejection.kind is LimitKind.TOKENS_PER_DAY


async def test_settle_is_idempotent_and_release_records_no_usage(env):
    store, _ = env
    team = Team(store)
    a, _ = await team.admit(50, team=QuotaLimits(tokens_per_day=1000))
    b, _ = await team.admit(50, team=QuotaLimits(tokens_per_day=1000))
    assert await team.settle(a, prompt=30, completion=10, model="m")
    assert not await team.settle(a, prompt=30, completion=10, model="m")
    assert await team.settle(b, prompt=0, mode=SettleMode.RELEASE, model="m")
    assert not await team.settle(b, prompt=0, model="m")
    day = dt.date(2026, 3, 10)
    [record] = await store.usage("emergency", day, day)
    assert (record.model, record.requests, record.prompt_tokens, record.completion_tokens) == ("m", 1, 30, 10)
    _, r = await team.admit(961, team=QuotaLimits(tokens_per_day=1000))  # 40 settled + 961 > 1000
    assert r.rejection.kind is LimitKind.TOKENS_PER_DAY


async def test_usage_only_settlements_count_toward_budgets_and_reports(env):
    store, _ = env
    await store.settle(Settlement("emergency", uuid.uuid4().hex, (TEAM_SCOPE,), "20260310", "202603", None, 70, 30, SettleMode.USAGE_ONLY))
    _, r = await Team(store).admit(901, team=QuotaLimits(tokens_per_day=1000))
    assert r.rejection.kind is LimitKind.TOKENS_PER_DAY and r.rejection.used == 100
    [record] = await store.usage("emergency", dt.date(2026, 3, 10), dt.date(2026, 3, 10))
    assert (record.model, record.requests, record.prompt_tokens) == (None, 1, 70)


async def test_usage_is_kept_per_day_and_model_and_per_team(env):
    store, clock = env
    team, other = Team(store, "emergency"), Team(store, "radiology")
    for model, prompt in (("a", 10), ("b", 20), ("a", 5)):
        rid, _ = await team.admit(100, model_name=model)
        await team.settle(rid, prompt=prompt, completion=1, model=model)
    clock.advance(86400)
    rid, _ = await team.admit(100, model_name="a")
    await team.settle(rid, prompt=7, completion=3, model="a")
    rid, _ = await other.admit(100)
    await other.settle(rid, prompt=1000)
    rows = await store.usage("emergency", dt.date(2026, 3, 9), dt.date(2026, 3, 12))
    assert [(r.day.isoformat(), r.model, r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [
        ("2026-03-10", "a", 2, 15, 2),
        ("2026-03-10", "b", 1, 20, 1),
        ("2026-03-11", "a", 1, 7, 3),
    ]


async def test_admin_overrides_are_stored_per_team_and_scope(env):
    store, _ = env
    limits = QuotaLimits(requests_per_minute=7, tokens_per_day=None)
    await store.set_override("emergency", TEAM_SCOPE, limits)
    await store.set_override("emergency", Scope(ScopeKind.MODEL, "weird:name/{x}"), QuotaLimits(max_concurrent=1))
    await store.set_override("radiology", KEY, QuotaLimits(tokens_per_minute=5))
    assert await store.get_overrides() == {
        ("emergency", TEAM_SCOPE): limits,
        ("emergency", Scope(ScopeKind.MODEL, "weird:name/{x}")): QuotaLimits(max_concurrent=1),
        ("radiology", KEY): QuotaLimits(tokens_per_minute=5),
    }
    await store.set_override("emergency", TEAM_SCOPE, None)
    assert ("emergency", TEAM_SCOPE) not in await store.get_overrides()


async def test_unlimited_scopes_still_record_usage_and_headers_are_absent(env):
    store, _ = env
    team = Team(store)
    rid, r = await team.admit(10)
    assert r.admitted and r.requests is None and r.tokens is None
    assert await team.settle(rid, prompt=4, completion=6)
