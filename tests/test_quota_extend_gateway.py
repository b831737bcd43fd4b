"""Dispatch first for teams with max_concurrent, in the real gateway (fake workers behind it): the
request takes its slot before dispatch with a reservation its prompt can only add to, the worker
counts the prompt on dispatch (no Tokenize call), and the reservation is extended to exactly what
the plain path reserves. Concurrency is never exceeded, a refused extension is a 429 that cancels
the generation and gives the slot back, and a store failing in between is an outage like any other."""
from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
import pytest
from fake_worker import TEAM, FakeConfig, FakeWorker, parse_sse, running_gateway

from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
from gateway.quota.errors import QuotaExceeded, QuotaStoreError
from gateway.quota.hooks import QuotaHooks, quota_error_converters
from gateway.quota.limits import TEAM_SCOPE, QuotaLimits
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import OutagePolicies, QuotaSettings
from gateway.quota.usage import UsageGroupBy

pytestmark = pytest.mark.anyio
MODEL = "fake-chat"
USER = [{"role": "user", "content": "three short words"}]
PROMPT = 5  # the fake worker's count of USER: <|user|> three short words <|assistant|>


class PeakSet(set):
    """The worker's set of requests in flight, remembering the most it ever held at once."""

    peak = 0

    def add(self, item) -> None:
        super().add(item)
        self.peak = max(self.peak, len(self))


class FlakyStore(InMemoryQuotaStore):
    """The in-process store whose extend fails like an unreachable Redis while ``down``."""

    down = False

    async def extend(self, request):
        if self.down:
            raise QuotaStoreError("connection refused")
        return await super().extend(request)


def quota_service(yaml_text: str, store=None, **settings) -> QuotaService:
    config = StaticQuotaConfig(parse_quota_config(yaml_text))
    return QuotaService(store or InMemoryQuotaStore(), config, QuotaSettings(redis_url=None, **settings))


def with_quotas(quotas: QuotaService) -> dict:
    return {"hooks": QuotaHooks(quotas), "error_converters": quota_error_converters()}


async def chat(gw, **body) -> httpx.Response:
    return await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **body})


async def assert_room(quotas: QuotaService, tokens: int) -> None:
    """Exactly ``tokens`` are free in the team's tightest token limit (and a concurrency slot)."""
    held = await quotas.admit(TEAM, reserve_tokens=tokens)
    with pytest.raises(QuotaExceeded):
        await quotas.admit(TEAM, reserve_tokens=1)
    await quotas.release(held)


async def test_a_chat_request_makes_no_tokenize_call_and_reserves_and_settles_as_the_plain_path():
    quotas = quota_service("defaults: {tokens_per_minute: 100000, tokens_per_day: 200000, max_concurrent: 4}")
    async with FakeWorker(FakeConfig(model=MODEL)) as worker:
        async with running_gateway({MODEL: [worker]}, **with_quotas(quotas)) as gw:
            answers = [await chat(gw, max_tokens=max_tokens) for max_tokens in (5, 7, 9)]
            streamed = await chat(gw, max_tokens=20, n=2, stream=True)
            assert [a.status_code for a in answers] == [200, 200, 200] and streamed.status_code == 200
            assert parse_sse(streamed.text)[-1] == "[DONE]"
            assert len(worker.servicer.tokenize_requests) == 1, "only the first request (no headroom known) was counted first"
            assert [r.report_prompt_tokens for r in worker.servicer.generate_requests] == [False, True, True, True]
            # The headers show each request's reservation: the plain path's exact prompt + n x max_tokens.
            used = 0
            for answer, reserved in zip([*answers, streamed], (PROMPT + 5, PROMPT + 7, PROMPT + 9, PROMPT + 2 * 20)):
                assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 100000 - used - reserved
                if answer is not streamed:
                    used += answer.json()["usage"]["total_tokens"]
            assert all(a.json()["usage"]["prompt_tokens"] == PROMPT for a in answers)
    today = dt.datetime.now(dt.timezone.utc).date()
    [row] = await quotas.usage(TEAM, today, today, UsageGroupBy.MODEL)
    assert (row.requests, row.prompt_tokens) == (4, 4 * PROMPT)
    # Settled to what was used: everything else came back to the window and the day budget.
    await assert_room(quotas, 100000 - row.prompt_tokens - row.completion_tokens)
    await quotas.aclose()


async def test_a_flood_through_the_shortcut_never_exceeds_max_concurrent():
    quotas = quota_service("defaults: {tokens_per_minute: 1000000, max_concurrent: 3}")
    async with FakeWorker(FakeConfig(model=MODEL, natural_length=5, token_delay_s=0.05)) as worker:
        worker.servicer.active = PeakSet()
        async with running_gateway({MODEL: [worker]}, **with_quotas(quotas)) as gw:
            first = await chat(gw, max_tokens=5)  # the admission that opens the shortcut
            assert first.status_code == 200
            flood = await asyncio.gather(*(chat(gw, max_tokens=5) for _ in range(50)))
            codes = [r.status_code for r in flood]
            assert set(codes) == {200, 429} and codes.count(200) >= 3
            refused = [r.json()["error"] for r in flood if r.status_code == 429]
            assert {(e["type"], e["code"]) for e in refused} == {("requests", "rate_limit_exceeded")}
            assert all("concurrent requests" in e["message"] for e in refused)
            assert worker.servicer.active.peak == 3
            # Concurrency refusals come before dispatch and leave the shortcut open: no Tokenize call.
            assert len(worker.servicer.tokenize_requests) == 1
            assert len(worker.servicer.generate_requests) == 1 + codes.count(200)
    used = sum(r.json()["usage"]["total_tokens"] for r in [first, *flood] if r.status_code == 200)
    await assert_room(quotas, 1000000 - used)
    await quotas.aclose()


async def test_a_refused_extension_is_a_429_that_cancels_the_generation_and_gives_the_slot_back():
    quotas = quota_service("defaults: {tokens_per_minute: 100000, max_concurrent: 1}")
    async with FakeWorker(FakeConfig(model=MODEL, first_token_delay_s=0.2)) as worker:
        async with running_gateway({MODEL: [worker]}, **with_quotas(quotas)) as gw:
            first = await chat(gw, max_tokens=5)
            assert first.status_code == 200
            used = first.json()["usage"]["total_tokens"]
            # 9 tokens left: room for the 5 any prompt reserves with max_tokens 5, not for this one's 10.
            quotas._limits.set_override(TEAM, TEAM_SCOPE, QuotaLimits(tokens_per_minute=used + 9, max_concurrent=1))
            refused = await chat(gw, max_tokens=5)
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert (error["type"], error["code"], error["param"]) == ("tokens", "rate_limit_exceeded", None)
            assert f"used {used}, requested {PROMPT + 5}" in error["message"]
            assert 55 <= int(refused.headers["retry-after"]) <= 60  # when the first request leaves the window
            assert refused.headers["x-ratelimit-remaining-tokens"] == "9"
            request = worker.servicer.generate_requests[-1]
            assert request.report_prompt_tokens
            for _ in range(50):
                if request.request_id in worker.servicer.cancelled:
                    break
                await asyncio.sleep(0.02)
            assert request.request_id in worker.servicer.cancelled
            assert worker.servicer.tokenize_requests == [worker.servicer.tokenize_requests[0]]
    # The refused request holds nothing: its slot and its first reservation came back, no usage.
    await assert_room(quotas, 9)
    today = dt.datetime.now(dt.timezone.utc).date()
    [row] = await quotas.usage(TEAM, today, today, UsageGroupBy.MODEL)
    assert row.requests == 1
    await quotas.aclose()


async def test_a_refused_extension_gives_back_its_requests_entry_as_its_429_said():
    quotas = quota_service("defaults: {requests_per_minute: 3, tokens_per_minute: 100000, max_concurrent: 1}")
    async with FakeWorker(FakeConfig(model=MODEL)) as worker:
        async with running_gateway({MODEL: [worker]}, **with_quotas(quotas)) as gw:
            first = await chat(gw, max_tokens=5)
            used = first.json()["usage"]["total_tokens"]
            limits = QuotaLimits(requests_per_minute=3, tokens_per_minute=used + 9, max_concurrent=1)
            quotas._limits.set_override(TEAM, TEAM_SCOPE, limits)
            refused = await chat(gw, max_tokens=5)  # the shortcut: admitted with 5 tokens, refused at 10
            assert refused.status_code == 429 and worker.servicer.generate_requests[-1].report_prompt_tokens
            assert refused.headers["x-ratelimit-remaining-requests"] == "2"
            fits = await chat(gw, max_tokens=1)
            assert fits.status_code == 200
            assert fits.headers["x-ratelimit-remaining-requests"] == "1"  # the refused request holds no entry
            assert fits.headers["x-ratelimit-remaining-tokens"] == str(9 - (PROMPT + 1))
    await quotas.aclose()


async def wait_until_replayed(quotas: QuotaService) -> None:
    deadline = time.monotonic() + 5
    while quotas.pending_settlements:
        assert time.monotonic() < deadline, "the queued release was never replayed"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("max_concurrent_policy", ["fail_closed", "local"])
async def test_a_store_failing_between_admit_and_extend_is_an_outage_and_the_slot_is_not_leaked(max_concurrent_policy):
    store = FlakyStore()
    policies = OutagePolicies(max_concurrent=max_concurrent_policy)
    quotas = quota_service("defaults: {tokens_per_minute: 100000, max_concurrent: 2}", store,
                           outage_policy=policies, override_refresh_s=0.05)
    async with FakeWorker(FakeConfig(model=MODEL)) as worker:
        async with running_gateway({MODEL: [worker]}, **with_quotas(quotas)) as gw:
            assert (await chat(gw, max_tokens=5)).status_code == 200
            store.down = True
            answer = await chat(gw, max_tokens=5)
            assert worker.servicer.generate_requests[-1].report_prompt_tokens
            store.down = False
            if max_concurrent_policy == "fail_closed":
                assert answer.status_code == 503 and answer.json()["error"]["code"] == "quota_unavailable"
                assert int(answer.headers["retry-after"]) >= 1
            else:  # the local limiter admitted it, as it admits any request during an outage
                assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
            await wait_until_replayed(quotas)
    # Both slots are free in the shared store: the first reservation was released once it answered.
    held = [await quotas.admit(TEAM, reserve_tokens=0) for _ in range(2)]
    for admission in held:
        assert not admission.degraded
        await quotas.release(admission)
    today = dt.datetime.now(dt.timezone.utc).date()
    [row] = await quotas.usage(TEAM, today, today, UsageGroupBy.MODEL)
    assert row.requests == (1 if max_concurrent_policy == "fail_closed" else 2)
    await quotas.aclose()
