"""QuotaService.extend and what the hooks reserve before the prompt is counted: the floor is never
more than the exact reservation, a refusal is the plain path's 429, a reservation no longer live is
admitted afresh, and a store failing between admit and extend is handled as an outage."""
from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from gateway.http.request_context import RequestContext
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.completions import CompletionRequest
from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
from gateway.quota.errors import QuotaExceeded, QuotaStoreError, QuotaUnavailable
from gateway.quota.hooks import QuotaHooks
from gateway.quota.limits import LimitKind
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import OutagePolicies, QuotaSettings
from gateway.quota.usage import UsageGroupBy
from quota_support import FakeClock

pytestmark = pytest.mark.anyio
T0 = 1_780_000_000.0


class SwitchableStore(InMemoryQuotaStore):
    """The in-process store; ``down`` makes the named operations fail like an unreachable Redis."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.down: set[str] = set()

    async def admit(self, request):
        if "admit" in self.down:
            raise QuotaStoreError("connection refused")
        return await super().admit(request)

    async def extend(self, request):
        if "extend" in self.down:
            raise QuotaStoreError("timed out", maybe_applied=True)
        return await super().extend(request)


def service_with(yaml_text: str, store=None, **settings) -> QuotaService:
    config = StaticQuotaConfig(parse_quota_config(yaml_text))
    return QuotaService(store or InMemoryQuotaStore(), config, QuotaSettings(redis_url=None, **settings))


async def test_an_extension_holds_the_total_and_a_refusal_is_the_plain_paths_429():
    quotas = service_with("defaults: {tokens_per_minute: 1000, max_concurrent: 2}")
    admission = await quotas.admit("t", reserve_tokens=100)
    extended = await quotas.extend(admission, reserve_tokens=400)
    assert extended is admission and admission.reserved_tokens == 400
    assert admission.headers["x-ratelimit-remaining-tokens"] == "600"
    other = await quotas.admit("t", reserve_tokens=500)
    with pytest.raises(QuotaExceeded) as refused:
        await quotas.extend(other, reserve_tokens=700)
    plain = refused.value
    assert (plain.limit_kind, plain.used, plain.requested) == (LimitKind.TOKENS_PER_MINUTE, 400, 700)
    assert plain.headers["x-ratelimit-remaining-tokens"] == "600"  # as if it held nothing, like the plain 429
    assert other.reserved_tokens == 500 and not other.settled  # still live: its caller releases it
    await quotas.release(other)
    await quotas.settle(admission, prompt_tokens=80, completion_tokens=20)  # 300 of the 400 come back
    assert (await quotas.admit("t", reserve_tokens=900)).reserved_tokens == 900
    await quotas.aclose()


async def test_a_token_refusal_withdraws_the_shortcut_and_a_concurrency_refusal_does_not():
    quotas = service_with("defaults: {tokens_per_minute: 10000, max_concurrent: 1}")
    admission = await quotas.admit("t", reserve_tokens=10)
    assert quotas.limits_concurrency("t") and quotas.has_headroom("t", most_tokens=100)
    with pytest.raises(QuotaExceeded):
        await quotas.admit("t", reserve_tokens=10)  # the slot is taken
    assert quotas.has_headroom("t", most_tokens=100), "concurrency is checked before dispatch on every path"
    with pytest.raises(QuotaExceeded):
        await quotas.extend(admission, reserve_tokens=10_001)
    assert not quotas.has_headroom("t", most_tokens=100)
    await quotas.aclose()


async def test_a_reservation_no_longer_live_is_admitted_afresh_with_every_limit_checked():
    clock = FakeClock(T0)
    quotas = service_with("defaults: {tokens_per_minute: 1000, max_concurrent: 1}", InMemoryQuotaStore(clock=clock),
                          reservation_ttl_s=30)
    expired = await quotas.admit("t", reserve_tokens=100)
    clock.advance(30)
    again = await quotas.extend(expired, reserve_tokens=300)
    assert again.id != expired.id and again.reserved_tokens == 300 and expired.settled
    with pytest.raises(QuotaExceeded) as refused:  # the fresh admission took the one slot
        await quotas.admit("t", reserve_tokens=0)
    assert refused.value.limit_kind is LimitKind.MAX_CONCURRENT
    await quotas.settle(again, prompt_tokens=10, completion_tokens=0)
    released = await quotas.admit("t", reserve_tokens=100)
    await quotas.release(released)
    fresh = await quotas.extend(released, reserve_tokens=890)  # given back already: afresh too
    assert fresh.id != released.id and fresh.reserved_tokens == 890
    with pytest.raises(QuotaExceeded):  # 100 of the expired one, 10 settled, 890: the window is full
        await quotas.admit("t", reserve_tokens=1)
    await quotas.aclose()


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open", "local"])
async def test_a_store_failing_at_extend_releases_the_first_reservation_and_applies_the_outage_policy(policy):
    store = SwitchableStore()
    quotas = service_with("defaults: {tokens_per_minute: 1000, max_concurrent: 1}", store,
                          outage_policy=OutagePolicies(max_concurrent=policy), override_refresh_s=0.02)
    await quotas.start()
    admission = await quotas.admit("t", reserve_tokens=100)
    store.down = {"extend"}
    if policy == "fail_closed":
        with pytest.raises(QuotaUnavailable):
            await quotas.extend(admission, reserve_tokens=300)
    else:
        degraded = await quotas.extend(admission, reserve_tokens=300)
        assert degraded.degraded and degraded.reserved_tokens == 300
        await quotas.settle(degraded, prompt_tokens=30, completion_tokens=5)
    assert admission.settled and quotas.pending_settlements == 1
    store.down = set()
    deadline = time.monotonic() + 5
    while quotas.pending_settlements:  # replayed by the maintenance loop once the store answers
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    # The slot and the first reservation's tokens came back to the shared store.
    held = await quotas.admit("t", reserve_tokens=1000)
    assert not held.degraded
    today = dt.datetime.now(dt.timezone.utc).date()
    rows = await quotas.usage("t", today, today, UsageGroupBy.DAY)
    assert [(r.requests, r.prompt_tokens) for r in rows] == ([] if policy == "fail_closed" else [(1, 30)])
    await quotas.aclose()


async def test_an_admission_made_during_an_outage_is_extended_in_the_local_limiter():
    store = SwitchableStore()
    store.down = {"admit"}
    quotas = service_with("defaults: {tokens_per_minute: 1000, max_concurrent: 4}", store, gateway_replicas=2)
    admission = await quotas.admit("t", reserve_tokens=100)
    assert admission.degraded
    assert (await quotas.extend(admission, reserve_tokens=500)).reserved_tokens == 500  # 1000 // 2 here
    other = await quotas.admit("t", reserve_tokens=0)
    with pytest.raises(QuotaExceeded):
        await quotas.extend(other, reserve_tokens=1)
    await quotas.aclose()


def context(params, max_model_len: int | None) -> RequestContext:
    endpoint = "/v1/completions" if isinstance(params, CompletionRequest) else "/v1/chat/completions"
    ctx = RequestContext(request_id="r", endpoint=endpoint, params=params, max_tokens=params.max_tokens)
    ctx.max_model_len = max_model_len
    return ctx


MESSAGES = [{"role": "user", "content": "hi"}]
REQUESTS = [
    ChatCompletionRequest(model="m", messages=MESSAGES),
    ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=1),
    ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=5),
    ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=5, n=3),
    ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=30, n=2),
    ChatCompletionRequest(model="m", messages=MESSAGES, max_tokens=500, n=2),
    CompletionRequest(model="m", prompt="hi", max_tokens=4, n=2, best_of=3),
    CompletionRequest(model="m", prompt=["a", "b"], max_tokens=7),
    CompletionRequest(model="m", prompt=["a", "b"]),
]


@pytest.mark.parametrize("params", REQUESTS, ids=lambda p: p.model_dump_json(exclude_none=True, exclude_defaults=True))
@pytest.mark.parametrize("max_model_len", [1, 16, 64, None])
async def test_the_reservation_made_before_counting_is_the_least_any_prompt_reserves(params, max_model_len):
    hooks = QuotaHooks(service_with(""), fallback_completion_tokens=100)
    ctx = context(params, max_model_len)
    floor = hooks.least_to_reserve(ctx)
    exact = []
    for prompt in range(0, (max_model_len or 64) + 4):
        ctx.set_prompt_token_count(prompt)
        exact.append(await hooks.tokens_to_reserve(ctx))
    assert floor == min(exact), "the floor is never above the exact reservation, and as high as it can be"
