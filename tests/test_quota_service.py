"""QuotaService: what the gateway sees per request, admin changes, audit, and the outage policy."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from prometheus_client import REGISTRY

from gateway.quota.audit import ChangeSource, QuotaChange
from gateway.quota.config_file import QuotaConfigFile, StaticQuotaConfig, parse_quota_config
from gateway.quota.errors import InvalidQuotaRequest, QuotaExceeded, QuotaStoreError, QuotaUnavailable
from gateway.quota.hooks import exceeded_error
from gateway.quota.limits import TEAM_SCOPE, LimitKind, QuotaLimits, Scope, ScopeKind
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.reservation import tokens_to_reserve
from gateway.quota.service import QuotaService
from gateway.quota.settings import OutagePolicies, QuotaSettings
from quota_support import delete_prefix, redis_url, require_redis, unique_prefix
from gateway.quota.usage import UsageGroupBy

pytestmark = pytest.mark.anyio
URL = redis_url(3)


class RecordingAudit:
    def __init__(self, fail: bool = False):
        self.changes: list[QuotaChange] = []
        self.fail = fail

    async def record_quota_change(self, change: QuotaChange) -> None:
        if self.fail:
            raise RuntimeError("audit database down")
        self.changes.append(change)


class SwitchableStore:
    """The in-process store behind a switch that makes every call fail like an unreachable Redis."""

    def __init__(self) -> None:
        self.inner = InMemoryQuotaStore()
        self.down = False
        self.calls = 0

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        async def call(*args, **kwargs):
            self.calls += 1
            if self.down and name != "aclose":
                raise QuotaStoreError("connection refused")
            return await method(*args, **kwargs)

        return call


def service_with(yaml_text: str = "", store=None, **settings) -> QuotaService:
    config = StaticQuotaConfig(parse_quota_config(yaml_text))
    return QuotaService(store or InMemoryQuotaStore(), config, QuotaSettings(redis_url=None, **settings))


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_admission_carries_openai_rate_limit_headers():
    quotas = service_with("defaults: {requests_per_minute: 60, tokens_per_minute: 150000}")
    admission = await quotas.admit("ed", reserve_tokens=1200)
    assert admission.headers == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "148800",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    await quotas.aclose()


async def test_refusal_raises_quota_exceeded_with_retry_headers_and_counts_it():
    quotas = service_with("teams: {ed: {keys: {k1: {requests_per_minute: 1}}}}")
    before = metric("ward_quota_rejected_total", team="ed", limit_kind="requests_per_minute")
    await quotas.admit("ed", key_id="k1", reserve_tokens=10)
    with pytest.raises(QuotaExceeded) as info:
        await quotas.admit("ed", key_id="k1", reserve_tokens=10)
    exc = info.value
    assert exc.limit_kind is LimitKind.REQUESTS_PER_MINUTE and exc.scope == Scope(ScopeKind.KEY, "k1")
    assert 59.9 < exc.retry_after_s <= 60.0
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"
    assert "requests per min (RPM)" in exc.message and "key 'k1'" in exc.message
    assert metric("ward_quota_rejected_total", team="ed", limit_kind="requests_per_minute") == before + 1
    # Another key of the same team is not held back by k1's lane.
    await quotas.admit("ed", key_id="k2", reserve_tokens=10)
    await quotas.aclose()


async def test_settle_returns_unused_tokens_and_is_idempotent():
    quotas = service_with("defaults: {tokens_per_minute: 1000}")
    first = await quotas.admit("ed", model="m", reserve_tokens=tokens_to_reserve(100, 800, 4096))
    with pytest.raises(QuotaExceeded):
        await quotas.admit("ed", model="m", reserve_tokens=900)
    await quotas.settle(first, prompt_tokens=100, completion_tokens=20)
    await quotas.settle(first, prompt_tokens=100, completion_tokens=20)  # no effect
    second = await quotas.admit("ed", model="m", reserve_tokens=880)
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    await quotas.release(second)
    today = dt.datetime.now(dt.timezone.utc).date()
    rows = await quotas.usage("ed", today, today, UsageGroupBy.MODEL)
    assert [r.as_dict(UsageGroupBy.MODEL) for r in rows] == [
        {"model": "m", "requests": 1, "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
    ]
    await quotas.aclose()


async def test_bad_input_raises_invalid_quota_request():
    quotas = service_with()
    for kwargs in ({"reserve_tokens": -1}, {"reserve_tokens": True}, {"reserve_tokens": 1, "model": ""}):
        with pytest.raises(InvalidQuotaRequest):
            await quotas.admit("ed", **kwargs)
    with pytest.raises(InvalidQuotaRequest):
        await quotas.admit("bad\nteam", reserve_tokens=1)
    with pytest.raises(InvalidQuotaRequest, match="context length"):
        tokens_to_reserve(5000, 10, 4096)
    assert tokens_to_reserve(1000, None, 4096) == 4096
    assert tokens_to_reserve(1000, 10, 4096) == 1010
    await quotas.aclose()


async def test_names_are_checked_once_per_valid_triple_and_bad_ones_every_time():
    quotas = service_with()
    for _ in range(2):  # refused again: a bad name is never remembered as checked
        with pytest.raises(InvalidQuotaRequest):
            await quotas.admit("ed", key_id="bad\nkey", model="m", reserve_tokens=1)
        with pytest.raises(InvalidQuotaRequest):
            await quotas.admit("ed", model="", reserve_tokens=1)
    for _ in range(2):  # a valid triple admitted twice; its tokens are still checked every time
        admission = await quotas.admit("ed", key_id="k1", model="m", reserve_tokens=1)
        await quotas.release(admission)
        with pytest.raises(InvalidQuotaRequest):
            await quotas.admit("ed", key_id="k1", model="m", reserve_tokens=-1)
    await quotas.aclose()


async def test_admin_limits_replace_the_file_for_that_scope_and_are_audited():
    audit = RecordingAudit()
    quotas = QuotaService(
        InMemoryQuotaStore(),
        StaticQuotaConfig(parse_quota_config("defaults: {requests_per_minute: 2, max_concurrent: 5}")),
        QuotaSettings(redis_url=None),
        audit=audit,
    )
    view = await quotas.set_limits("ed", QuotaLimits(requests_per_minute=1), actor="alice")
    assert (view.limits, view.source) == (QuotaLimits(requests_per_minute=1), "admin")
    await quotas.admit("ed", reserve_tokens=0)
    with pytest.raises(QuotaExceeded):
        await quotas.admit("ed", reserve_tokens=0)
    [change] = audit.changes
    assert (change.source, change.actor, change.team, change.scope) == (ChangeSource.ADMIN_API, "alice", "ed", TEAM_SCOPE)
    assert change.before == QuotaLimits(requests_per_minute=2, max_concurrent=5)
    assert change.after == QuotaLimits(requests_per_minute=1)

    view = await quotas.clear_limits("ed", actor="alice")
    assert view.source == "default" and view.limits.requests_per_minute == 2
    assert audit.changes[-1].after == QuotaLimits(requests_per_minute=2, max_concurrent=5)
    await quotas.aclose()


async def test_an_admin_change_that_cannot_be_audited_is_undone():
    quotas = QuotaService(InMemoryQuotaStore(), StaticQuotaConfig(), QuotaSettings(redis_url=None), audit=RecordingAudit(fail=True))
    with pytest.raises(RuntimeError, match="audit database down"):
        await quotas.set_limits("ed", QuotaLimits(requests_per_minute=0), actor="mallory")
    [team_view] = await quotas.team_limits("ed")
    assert team_view.source == "none"
    await quotas.admit("ed", reserve_tokens=1)  # the 0 limit is not in force
    await quotas.aclose()


async def test_file_reloads_are_audited(tmp_path):
    path = tmp_path / "quotas.yaml"
    path.write_text("teams: {ed: {limits: {max_concurrent: 4}}}\n")
    audit = RecordingAudit()
    config = QuotaConfigFile(path, check_interval_s=0.01)
    quotas = QuotaService(InMemoryQuotaStore(), config, QuotaSettings(redis_url=None), audit=audit)
    path.write_text("teams: {ed: {limits: {max_concurrent: 8}}}\n")
    await asyncio.sleep(0.02)
    admission = await quotas.admit("ed", reserve_tokens=0)  # the request path notices the change
    await asyncio.sleep(0.05)
    [change] = audit.changes
    assert change.source is ChangeSource.CONFIG_FILE and change.actor == str(path)
    assert (change.before.max_concurrent, change.after.max_concurrent) == (4, 8)
    await quotas.settle(admission, prompt_tokens=0, completion_tokens=0)
    await quotas.aclose()


async def test_admin_changes_reach_other_gateway_processes_through_redis():
    require_redis(URL)
    prefix = unique_prefix("svc")
    settings = QuotaSettings(redis_url=URL, key_prefix=prefix, override_refresh_s=0.05)
    a = QuotaService(RedisQuotaStore.from_url(URL, key_prefix=prefix), StaticQuotaConfig(), settings)
    b = QuotaService(RedisQuotaStore.from_url(URL, key_prefix=prefix), StaticQuotaConfig(), settings)
    try:
        await a.start()
        await b.start()
        await b.admit("ed", reserve_tokens=1)
        await a.set_limits("ed", QuotaLimits(requests_per_minute=2), actor="alice")
        await asyncio.sleep(0.2)  # a few refresh intervals
        await b.admit("ed", reserve_tokens=1)  # the first admit came before the limit existed
        await b.admit("ed", reserve_tokens=1)
        with pytest.raises(QuotaExceeded):
            await b.admit("ed", reserve_tokens=1)
        views = await b.team_limits("ed")
        assert views[0].source == "admin"
    finally:
        await a.aclose()
        await b.aclose()
        delete_prefix(URL, prefix)


# ---- outage policy (a store switched off; the real Redis outage is in test_quota_outage.py) ----------


async def test_outage_fails_closed_for_budgets_and_enforces_a_local_share_of_rates():
    store = SwitchableStore()
    yaml_text = """
teams:
  budgeted: {limits: {tokens_per_day: 1000000}}
  rated: {limits: {requests_per_minute: 7, max_concurrent: 100}}
"""
    quotas = service_with(yaml_text, store, gateway_replicas=3, breaker_failure_threshold=2, breaker_reset_s=0.1)
    await quotas.start()
    store.down = True
    unavailable = metric("ward_quota_unavailable_total", team="budgeted")
    with pytest.raises(QuotaUnavailable, match="tokens_per_day") as info:
        await quotas.admit("budgeted", reserve_tokens=10)
    assert info.value.retry_after_s >= 1.0
    assert metric("ward_quota_unavailable_total", team="budgeted") == unavailable + 1
    # 7 // 3 = 2 per gateway while the store is away: three gateways admit at most 6 < 7.
    first = await quotas.admit("rated", reserve_tokens=10)
    await quotas.admit("rated", reserve_tokens=10)
    with pytest.raises(QuotaExceeded) as refused:
        await quotas.admit("rated", reserve_tokens=10)
    assert refused.value.limit == 2 and first.degraded
    assert quotas.degraded and metric("ward_quota_degraded") == 1.0
    await quotas.settle(first, prompt_tokens=3, completion_tokens=4)
    assert quotas.pending_settlements == 1  # its usage waits for the store

    calls = store.calls
    with pytest.raises(QuotaExceeded):
        await quotas.admit("rated", reserve_tokens=10)  # the breaker is open: no call is attempted
    assert store.calls == calls

    store.down = False
    await asyncio.sleep(0.15)  # past breaker_reset_s: the next call probes the store
    admission = await quotas.admit("budgeted", reserve_tokens=10)
    assert not admission.degraded and not quotas.degraded and metric("ward_quota_degraded") == 0.0
    for _ in range(100):
        if quotas.pending_settlements == 0:
            break
        await asyncio.sleep(0.05)
    assert quotas.pending_settlements == 0
    today = dt.datetime.now(dt.timezone.utc).date()
    rows = await quotas.usage("rated", today, today, UsageGroupBy.DAY)
    assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [(1, 3, 4)]
    await quotas.aclose()


async def test_outage_a_request_only_this_gateways_share_refuses_may_retry_rather_than_never_fit():
    """8 gateways share a limit of 4 (the chart sets gateway_replicas to the HPA's maximum): each keeps
    4 // 8 = 0 while the store is away, which must not tell clients that the request can never fit."""
    store = SwitchableStore()
    yaml_text = """
teams:
  batch: {limits: {max_concurrent: 4}}
  rated: {limits: {tokens_per_minute: 800}}
"""
    quotas = service_with(yaml_text, store, gateway_replicas=8, breaker_failure_threshold=1, breaker_reset_s=5.0)
    await quotas.start()
    store.down = True
    with pytest.raises(QuotaExceeded) as share:
        await quotas.admit("batch", reserve_tokens=10)
    assert share.value.limit_kind is LimitKind.MAX_CONCURRENT
    assert not share.value.never_fits and 1.0 <= share.value.retry_after_s <= 5.0  # once the store is back
    assert "x-should-retry" not in exceeded_error(share.value).headers
    with pytest.raises(QuotaExceeded) as tokens:  # 500 fit the limit of 800, not the share of 100
        await quotas.admit("rated", reserve_tokens=500)
    assert not tokens.value.never_fits and tokens.value.retry_after_s >= 1.0
    with pytest.raises(QuotaExceeded) as never:  # more than the whole limit: no wait helps
        await quotas.admit("rated", reserve_tokens=801)
    assert never.value.never_fits
    await quotas.aclose()


async def test_outage_policies_can_fail_open_and_a_settle_made_during_the_outage_is_replayed():
    store = SwitchableStore()
    policies = OutagePolicies(tokens_per_day="fail_open", requests_per_minute="fail_closed")
    quotas = service_with(
        "defaults: {tokens_per_day: 100, max_concurrent: 1}", store,
        outage_policy=policies, breaker_failure_threshold=1, breaker_reset_s=0.05, override_refresh_s=0.05,
    )
    before = await quotas.admit("ed", reserve_tokens=60)  # admitted by the store
    store.down = True
    await quotas.settle(before, prompt_tokens=50, completion_tokens=0)
    assert quotas.pending_settlements == 1
    during = await quotas.admit("ed", reserve_tokens=60)  # budget fails open; concurrency 1 // 1 locally
    assert during.degraded
    with pytest.raises(QuotaExceeded):
        await quotas.admit("ed", reserve_tokens=1)
    await quotas.release(during)
    store.down = False
    for _ in range(100):  # the maintenance loop probes the store and replays, with no traffic needed
        if quotas.pending_settlements == 0 and not quotas.degraded:
            break
        await asyncio.sleep(0.05)
    assert quotas.pending_settlements == 0 and not quotas.degraded
    with pytest.raises(QuotaExceeded) as info:  # the replayed settle counts: 50 + 60 > 100
        await quotas.admit("ed", reserve_tokens=60)
    assert info.value.limit_kind is LimitKind.TOKENS_PER_DAY
    await quotas.aclose()


# ---- construction ------------------------------------------------------------------------------


async def test_the_factory_picks_redis_only_when_a_url_is_set_and_refuses_a_bad_file(tmp_path, monkeypatch):
    from gateway.quota.config_file import QuotaConfigError
    from gateway.quota.factory import build_quota_service

    monkeypatch.delenv("WARD_REDIS_URL", raising=False)
    embedded = build_quota_service(QuotaSettings())
    assert isinstance(embedded._store, InMemoryQuotaStore)
    await embedded.aclose()
    monkeypatch.setenv("WARD_REDIS_URL", URL)
    shared = build_quota_service(QuotaSettings())
    assert isinstance(shared._store, RedisQuotaStore)
    await shared.aclose()
    bad = tmp_path / "quotas.yaml"
    bad.write_text("teams: {ed: {limits: {tokens_per_day: -5}}}\n")
    with pytest.raises(QuotaConfigError, match="teams.ed.limits.tokens_per_day"):
        build_quota_service(QuotaSettings(redis_url=None, config_file=bad))


async def test_the_embedded_store_keeps_admin_limits_across_restarts_in_its_file(tmp_path):
    path = tmp_path / "quota-overrides.json"
    first = QuotaService(InMemoryQuotaStore(overrides_path=path), StaticQuotaConfig(), QuotaSettings(redis_url=None))
    await first.set_limits("ed", QuotaLimits(requests_per_minute=1), actor="alice", scope=Scope(ScopeKind.MODEL, "m"))
    await first.aclose()
    second = QuotaService(InMemoryQuotaStore(overrides_path=path), StaticQuotaConfig(), QuotaSettings(redis_url=None))
    await second.admit("ed", model="m", reserve_tokens=0)
    with pytest.raises(QuotaExceeded):
        await second.admit("ed", model="m", reserve_tokens=0)
    await second.aclose()


async def test_two_processes_on_one_overrides_file_see_and_keep_each_others_changes(tmp_path):
    # a running gateway and `ward quotas` on the same host: neither may lose or miss the other's change
    path = tmp_path / "quota" / "overrides.json"
    gateway, command = InMemoryQuotaStore(overrides_path=path), InMemoryQuotaStore(overrides_path=path)
    await gateway.set_override("ed", TEAM_SCOPE, QuotaLimits(requests_per_minute=5))
    await command.set_override("icu", TEAM_SCOPE, QuotaLimits(max_concurrent=2))  # written after the gateway's
    await gateway.set_override("ed", Scope(ScopeKind.MODEL, "m"), QuotaLimits(tokens_per_day=9))
    expected = {("ed", TEAM_SCOPE): QuotaLimits(requests_per_minute=5), ("icu", TEAM_SCOPE): QuotaLimits(max_concurrent=2),
                ("ed", Scope(ScopeKind.MODEL, "m")): QuotaLimits(tokens_per_day=9)}
    assert await gateway.get_overrides() == expected
    assert await command.get_overrides() == expected
    assert await InMemoryQuotaStore(overrides_path=path).get_overrides() == expected


async def test_a_broken_overrides_file_keeps_the_limits_in_force_and_refuses_changes(tmp_path):
    path = tmp_path / "overrides.json"
    store = InMemoryQuotaStore(overrides_path=path)
    await store.set_override("ed", TEAM_SCOPE, QuotaLimits(requests_per_minute=5))
    path.write_text("{not json")
    assert await store.get_overrides() == {("ed", TEAM_SCOPE): QuotaLimits(requests_per_minute=5)}
    with pytest.raises(QuotaUnavailable, match="cannot be read"):
        await store.set_override("ed", TEAM_SCOPE, None)
    assert path.read_text() == "{not json"  # never overwritten with what this process happens to hold


async def test_quota_metrics_can_be_served_from_the_gateway_apps_own_registry():
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.quota.metrics import QuotaMetricsCollector

    quotas = service_with("teams: {metrics-team: {limits: {requests_per_minute: 1}}}")
    await quotas.admit("metrics-team", reserve_tokens=0)
    with pytest.raises(QuotaExceeded):
        await quotas.admit("metrics-team", reserve_tokens=0)
    registry = CollectorRegistry()
    registry.register(QuotaMetricsCollector())
    text = generate_latest(registry).decode()
    assert 'ward_quota_admitted_total{mode="exact",team="metrics-team"} 1.0' in text
    assert 'ward_quota_rejected_total{limit_kind="requests_per_minute",team="metrics-team"} 1.0' in text
    assert "ward_quota_degraded " in text
    await quotas.aclose()
