"""The stores' extend: a live reservation raised to a new total, checked against every token limit as
admit would check that total now; a refusal changes nothing, a repeat changes nothing, and a
reservation that is no longer live is a typed answer. Each test runs on Redis and in-process."""
from __future__ import annotations

import datetime as dt
import uuid

import pytest

from gateway.quota.limits import TEAM_SCOPE, LimitKind, QuotaLimits, ScopeLimits
from gateway.quota.store import ExtendRequest, ExtendStatus, SettleMode
from quota_support import MODEL, Team, store_env  # noqa: F401 - the fixture `env`: each test on both stores

pytestmark = pytest.mark.anyio
EVERY_TOKEN_LIMIT = QuotaLimits(tokens_per_minute=1000, tokens_per_day=2000, tokens_per_month=3000, max_concurrent=5)


async def room(team: Team, limits: QuotaLimits) -> int:
    """The most one more request could reserve now (found by admitting and releasing)."""
    low, high = 0, 4000
    while low < high:
        mid = (low + high + 1) // 2
        rid, r = await team.admit(mid, team=limits)
        if r.admitted:
            await team.settle(rid, prompt=0, mode=SettleMode.RELEASE)
            low = mid
        else:
            high = mid - 1
    return low


async def test_an_extension_within_every_limit_holds_the_new_total_until_settled(env):
    store, _ = env
    team = Team(store)
    rid, first = await team.admit(100, team=EVERY_TOKEN_LIMIT)
    assert first.tokens.remaining == 900
    extended = await team.extend(rid, 300)
    assert extended.status is ExtendStatus.EXTENDED and extended.rejection is None
    assert extended.tokens.remaining == 700
    assert await room(team, EVERY_TOKEN_LIMIT) == 700
    # Settle gives back the difference between the 300 held and the 120 used, in every limit.
    assert await team.settle(rid, prompt=100, completion=20)
    assert await room(team, EVERY_TOKEN_LIMIT) == 880


async def test_a_refusal_by_tokens_per_minute_changes_nothing(env):
    store, _ = env
    team, limits = Team(store), QuotaLimits(tokens_per_minute=1000, max_concurrent=5)
    rid, _ = await team.admit(100, team=limits)
    await team.admit(500, team=limits)
    refused = await team.extend(rid, 501)
    assert refused.status is ExtendStatus.REFUSED
    # As admit would answer for 501 tokens beside the other 500: its own 100 are not counted.
    r = refused.rejection
    assert (r.kind, r.scope, r.limit, r.used) == (LimitKind.TOKENS_PER_MINUTE, TEAM_SCOPE, 1000, 500)
    assert r.retry_after_s == pytest.approx(60.0)
    assert refused.tokens.remaining == 500  # the headers of that refusal: as if the request were released
    assert await room(team, limits) == 400  # it is not until its caller releases it
    assert (await team.extend(rid, 500)).status is ExtendStatus.EXTENDED  # exactly the limit


async def test_a_total_larger_than_the_limit_can_never_fit(env):
    store, _ = env
    team, limits = Team(store), QuotaLimits(tokens_per_minute=1000)
    rid, _ = await team.admit(10, team=limits)
    refused = await team.extend(rid, 1001)
    assert refused.status is ExtendStatus.REFUSED and refused.rejection.retry_after_s is None


@pytest.mark.parametrize(
    ("limits", "kind", "retry_after_s"),
    [
        (QuotaLimits(tokens_per_day=1000), LimitKind.TOKENS_PER_DAY, 1.0),
        (QuotaLimits(tokens_per_month=1000), LimitKind.TOKENS_PER_MONTH, 1.0),
    ],
)
async def test_a_refusal_by_a_budget_changes_nothing(env, limits, kind, retry_after_s):
    store, _ = env
    team = Team(store)
    rid, _ = await team.admit(100, team=limits)
    other, _ = await team.admit(600, team=limits)
    refused = await team.extend(rid, 401)
    assert refused.status is ExtendStatus.REFUSED
    r = refused.rejection
    assert (r.kind, r.limit, r.used) == (kind, 1000, 600)
    assert r.retry_after_s == pytest.approx(retry_after_s)  # the other request in flight may settle soon
    assert await room(team, limits) == 300
    await team.settle(other, prompt=600)
    refused = await team.extend(rid, 401)  # 600 settled: the budget frees only with the next period
    assert refused.rejection.kind is kind and refused.rejection.retry_after_s > 3600
    assert (await team.extend(rid, 400)).status is ExtendStatus.EXTENDED


async def test_the_narrowest_scope_refuses_and_the_others_are_untouched(env):
    store, _ = env
    team = Team(store)
    scopes = {"team": QuotaLimits(tokens_per_minute=10_000), "model": QuotaLimits(tokens_per_minute=500)}
    rid, _ = await team.admit(100, **scopes)
    refused = await team.extend(rid, 501)
    assert refused.rejection.scope == MODEL and refused.rejection.used == 0
    assert refused.tokens.remaining == 500  # the tightest scope, without the refused request
    assert (await team.extend(rid, 500)).tokens.remaining == 0


async def test_the_retry_after_of_a_refusal_ignores_the_requests_own_entry(env):
    """Its own tokens leaving the window free no room for its new total, as for a plain admit."""
    store, clock = env
    team, limits = Team(store), QuotaLimits(tokens_per_minute=1000)
    rid, _ = await team.admit(100, team=limits)  # t = 0
    clock.advance(10)
    await team.admit(500, team=limits)  # t = 10
    clock.advance(10)
    refused = await team.extend(rid, 600)  # t = 20: needs 100 more than the 500 of t = 10 leave
    assert refused.rejection.retry_after_s == pytest.approx(50.0)


async def test_a_refusal_reports_the_windows_without_the_request(env):
    store, clock = env
    team, limits = Team(store), QuotaLimits(requests_per_minute=10, tokens_per_minute=1000)
    rid, _ = await team.admit(100, team=limits)  # t = 0
    clock.advance(5)
    await team.admit(800, team=limits)  # t = 5
    refused = await team.extend(rid, 300)
    assert (refused.requests.remaining, refused.tokens.remaining) == (9, 200)
    assert refused.tokens.reset_s == pytest.approx(60.0) and refused.requests.reset_s == pytest.approx(60.0)
    extended = await team.extend(rid, 200)
    assert (extended.requests.remaining, extended.tokens.remaining) == (8, 0)
    assert extended.requests.reset_s == pytest.approx(55.0)


async def test_a_refused_request_withdrawn_leaves_the_windows_as_its_refusal_reported_them(env):
    store, clock = env
    team, limits = Team(store), QuotaLimits(requests_per_minute=2, tokens_per_minute=1000, max_concurrent=1)
    rid, _ = await team.admit(100, team=limits)  # t = 0
    clock.advance(5)
    refused = await team.extend(rid, 1001)
    assert (refused.requests.remaining, refused.tokens.remaining) == (2, 1000)
    assert await team.settle(rid, prompt=0, mode=SettleMode.WITHDRAW)
    assert not await team.settle(rid, prompt=0, mode=SettleMode.WITHDRAW)  # once
    _, first = await team.admit(900, team=limits)  # t = 5: its slot, entry and tokens are free
    assert first.admitted and (first.requests.remaining, first.tokens.remaining) == (1, 100)
    assert first.requests.reset_s == pytest.approx(60.0) and first.tokens.reset_s == pytest.approx(60.0)
    assert await store.usage(team.name, *[dt.datetime.fromtimestamp(clock.now, dt.timezone.utc).date()] * 2) == []


async def test_the_extended_tokens_count_in_the_window_from_the_time_of_the_extension(env):
    store, clock = env
    team, limits = Team(store), QuotaLimits(requests_per_minute=10, tokens_per_minute=1000)
    rid, _ = await team.admit(100, team=limits)  # t = 0
    clock.advance(30)
    assert (await team.extend(rid, 300)).status is ExtendStatus.EXTENDED  # t = 30
    clock.advance(31)  # t = 61: the request left the requests window, its tokens did not
    _, r = await team.admit(0, team=limits)
    assert (r.requests.remaining, r.tokens.remaining) == (9, 700)
    clock.advance(30)  # t = 91
    _, r = await team.admit(0, team=limits)
    assert r.tokens.remaining == 1000


async def test_the_request_keeps_its_concurrency_slot(env):
    store, _ = env
    team, limits = Team(store), QuotaLimits(max_concurrent=1, tokens_per_day=1000)
    rid, _ = await team.admit(10, team=limits)
    assert (await team.extend(rid, 50)).status is ExtendStatus.EXTENDED
    _, refused = await team.admit(0, team=limits)
    assert refused.rejection.kind is LimitKind.MAX_CONCURRENT
    await team.settle(rid, prompt=5)
    assert (await team.admit(0, team=limits))[1].admitted


async def test_a_repeated_extension_changes_nothing_and_answers_the_same(env):
    store, _ = env
    team = Team(store)
    rid, _ = await team.admit(100, team=EVERY_TOKEN_LIMIT)
    first = await team.extend(rid, 300)
    again = await team.extend(rid, 300)
    assert again == first and again.status is ExtendStatus.EXTENDED
    lower = await team.extend(rid, 200)  # never lowers a reservation: settle does that
    assert lower.status is ExtendStatus.EXTENDED and lower.tokens.remaining == 700
    assert await room(team, EVERY_TOKEN_LIMIT) == 700


async def test_a_repeat_is_answered_even_once_the_window_is_full(env):
    """The repeat of an extension that went through is not checked again."""
    store, _ = env
    team, limits = Team(store), QuotaLimits(tokens_per_minute=1000)
    rid, _ = await team.admit(100, team=limits)
    assert (await team.extend(rid, 300)).status is ExtendStatus.EXTENDED
    await team.admit(700, team=limits)
    assert (await team.extend(rid, 300)).status is ExtendStatus.EXTENDED
    assert (await team.extend(rid, 301)).status is ExtendStatus.REFUSED


async def test_a_reservation_that_is_not_live_is_unknown_and_nothing_changes(env):
    store, clock = env
    team, limits = Team(store, ttl_s=120), QuotaLimits(tokens_per_minute=1000, max_concurrent=3)
    never = await store.extend(ExtendRequest("emergency", uuid.uuid4().hex, 10, (ScopeLimits(TEAM_SCOPE, limits),)))
    assert never.status is ExtendStatus.UNKNOWN and never.rejection is None
    settled, _ = await team.admit(100, team=limits)
    await team.settle(settled, prompt=40)
    released, _ = await team.admit(100, team=limits)
    await team.settle(released, prompt=0, mode=SettleMode.RELEASE)
    for rid in (settled, released):
        assert (await team.extend(rid, 500)).status is ExtendStatus.UNKNOWN
    assert await room(team, limits) == 960
    expired, _ = await team.admit(100, team=limits)
    clock.advance(120)  # its ttl: its concurrency slot is free again, so it must not grow
    assert (await team.extend(expired, 500)).status is ExtendStatus.UNKNOWN
    assert await room(team, limits) == 1000  # every entry of t = 0 left the window, nothing was added
