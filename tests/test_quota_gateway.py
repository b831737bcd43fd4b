"""Quotas in the real gateway (fake workers behind it): the reservation is the exact prompt plus the
completion budget, headers ride on every response, 429/503 leave in OpenAI's shape, the `openai`
client's retry waits for Retry-After, and failed requests give their reservation back."""
from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx2
import openai
import pytest
from fake_worker import API_KEY, TEAM, FakeConfig, FakeWorker, parse_sse, running_gateway

from gateway.hooks import HookChain, NoopHooks
from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
from gateway.quota.errors import QuotaExceeded, QuotaStoreError
from gateway.quota.hooks import QuotaHooks, quota_error_converters
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import QuotaSettings
from gateway.quota.usage import UsageGroupBy

pytestmark = pytest.mark.anyio
MODEL, EMBED = "fake-chat", "fake-embed"
USER = [{"role": "user", "content": "three short words"}]
RATE_HEADERS = {f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")}


class ShiftedClock:
    """Real time plus an offset the test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def quota_service(yaml_text: str, store=None) -> QuotaService:
    return QuotaService(store or InMemoryQuotaStore(), StaticQuotaConfig(parse_quota_config(yaml_text)), QuotaSettings(redis_url=None))


def with_quotas(quotas: QuotaService) -> dict:
    return {"hooks": QuotaHooks(quotas), "error_converters": quota_error_converters()}


def openai_client(app, max_retries: int) -> openai.AsyncOpenAI:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gateway/v1")
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=API_KEY, max_retries=max_retries, http_client=http)


async def test_headers_on_every_response_and_the_reservation_is_prompt_plus_max_tokens():
    quotas = quota_service("defaults: {requests_per_minute: 100, tokens_per_minute: 10000}")
    async with FakeWorker(FakeConfig(model=MODEL)) as chat, FakeWorker(FakeConfig(model=EMBED, task="embed")) as embed:
        async with running_gateway({MODEL: [chat], EMBED: [embed]}, **with_quotas(quotas)) as gw:
            first = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 50})
            assert first.status_code == 200 and RATE_HEADERS <= set(first.headers)
            usage = first.json()["usage"]
            assert first.headers["x-ratelimit-remaining-requests"] == "99"
            assert first.headers["x-ratelimit-limit-tokens"] == "10000"
            assert int(first.headers["x-ratelimit-remaining-tokens"]) == 10000 - (usage["prompt_tokens"] + 50)

            streamed = await gw.client.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 20, "n": 2, "stream": True}
            )
            assert streamed.status_code == 200 and RATE_HEADERS <= set(streamed.headers)
            assert parse_sse(streamed.text)[-1] == "[DONE]"
            # The first request was settled to what it used; this one reserved prompt + 2 x 20.
            expected = 10000 - usage["total_tokens"] - (usage["prompt_tokens"] + 2 * 20)
            assert int(streamed.headers["x-ratelimit-remaining-tokens"]) == expected

            embedded = await gw.client.post("/v1/embeddings", json={"model": EMBED, "input": ["one two", "three"]})
            assert embedded.status_code == 200 and RATE_HEADERS <= set(embedded.headers)

    today = dt.datetime.now(dt.timezone.utc).date()
    rows = await quotas.usage(TEAM, today, today, UsageGroupBy.MODEL)
    by_model = {r.group: (r.requests, r.prompt_tokens) for r in rows}
    assert by_model[EMBED] == (1, 3) and by_model[MODEL][0] == 2
    await quotas.aclose()


async def test_a_429_has_openai_shape_and_the_openai_client_waits_for_retry_after():
    clock = ShiftedClock()
    quotas = quota_service("defaults: {requests_per_minute: 1}", InMemoryQuotaStore(clock=clock))
    async with FakeWorker(FakeConfig(model=MODEL)) as chat:
        async with running_gateway({MODEL: [chat]}, **with_quotas(quotas)) as gw:
            await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
            refused = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)
            assert 59 <= int(refused.headers["retry-after"]) <= 60
            # Only requests_per_minute is limited: the token headers are left out, the request ones are there.
            assert {h for h in RATE_HEADERS if h.endswith("requests")} <= set(refused.headers)
            assert refused.headers["x-ratelimit-remaining-requests"] == "0"

            no_retry = openai_client(gw.app, max_retries=0)
            with pytest.raises(openai.RateLimitError) as info:
                await no_retry.chat.completions.create(model=MODEL, messages=USER)
            assert info.value.code == "rate_limit_exceeded" and info.value.type == "requests"

            clock.offset = 58.5  # the one admitted request leaves the window 1.5 s from now
            retrying = openai_client(gw.app, max_retries=2)
            started = time.monotonic()
            done = await retrying.chat.completions.create(model=MODEL, messages=USER)
            waited = time.monotonic() - started
            assert done.choices[0].message.content
            assert 1.4 <= waited < 4.0, waited  # Retry-After, not the client's 0.5 s backoff
    await quotas.aclose()


class FailureRecorder(NoopHooks):
    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []  # (prompt tokens from Tokenize, completion tokens)

    async def on_failure(self, ctx) -> None:
        self.seen.append((await ctx.prompt_token_count(), ctx.completion_tokens))


async def test_a_stream_lost_mid_way_gives_back_all_but_what_was_used():
    quotas = quota_service("defaults: {tokens_per_minute: 1000}")
    recorder = FailureRecorder()
    config = FakeConfig(model=MODEL, natural_length=200, token_delay_s=0.02, max_model_len=1000)
    hooks = {"hooks": HookChain([QuotaHooks(quotas), recorder]), "error_converters": quota_error_converters()}
    async with FakeWorker(config) as chat:
        async with running_gateway({MODEL: [chat]}, **hooks) as gw:
            body = {"model": MODEL, "messages": USER, "max_tokens": 900, "stream": True}

            async def stop_soon() -> None:
                await asyncio.sleep(0.3)
                await chat.stop()

            stopper = asyncio.create_task(stop_soon())
            response = await gw.client.post("/v1/chat/completions", json=body)
            await stopper
            events = parse_sse(response.text)
            assert "error" in events[-1]  # the stream ended with an error event
            streamed = sum(1 for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content"))
            assert 0 < streamed < 200
    # Charged the exact prompt and the tokens generated before the loss (at least those that reached
    # the client); the rest of the 900 came back.
    [(prompt, generated)] = recorder.seen
    assert generated >= streamed
    charged = prompt + generated
    held = await quotas.admit(TEAM, reserve_tokens=1000 - charged)
    with pytest.raises(QuotaExceeded):
        await quotas.admit(TEAM, reserve_tokens=1)
    await quotas.release(held)
    await quotas.aclose()


async def test_requests_refused_by_the_worker_before_generation_record_nothing():
    quotas = quota_service("defaults: {tokens_per_minute: 1000}")
    async with FakeWorker(FakeConfig(model=MODEL, max_model_len=64)) as chat:
        async with running_gateway({MODEL: [chat]}, **with_quotas(quotas)) as gw:
            too_long = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 500})
            assert too_long.status_code == 400
    held = await quotas.admit(TEAM, reserve_tokens=1000)  # everything was given back
    await quotas.release(held)
    today = dt.datetime.now(dt.timezone.utc).date()
    rows = await quotas.usage(TEAM, today, today, UsageGroupBy.DAY)
    assert sum(r.prompt_tokens + r.completion_tokens for r in rows) == 0
    await quotas.aclose()


class DownStore(InMemoryQuotaStore):
    async def admit(self, request):
        raise QuotaStoreError("connection refused")


async def test_a_store_outage_with_a_budget_in_play_is_a_503_in_openai_shape():
    quotas = quota_service("defaults: {tokens_per_day: 100000}", DownStore())
    async with FakeWorker(FakeConfig(model=MODEL)) as chat:
        async with running_gateway({MODEL: [chat]}, **with_quotas(quotas)) as gw:
            response = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "quota_unavailable")
    assert "tokens_per_day" in error["message"]


async def test_without_a_token_limit_the_prompt_is_not_counted_before_dispatch_and_usage_is_still_settled():
    quotas = quota_service("defaults: {requests_per_minute: 100}\nteams:\n  other: {limits: {tokens_per_minute: 1000}}")
    async with FakeWorker(FakeConfig(model=MODEL)) as chat:
        async with running_gateway({MODEL: [chat]}, **with_quotas(quotas)) as gw:
            answer = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 5})
            assert answer.status_code == 200 and answer.headers["x-ratelimit-remaining-requests"] == "99"
            assert chat.servicer.tokenize_requests == []  # no Tokenize round trip: no token limit applies
    today = dt.datetime.now(dt.timezone.utc).date()
    [row] = await quotas.usage(TEAM, today, today, UsageGroupBy.DAY)
    assert (row.requests, row.prompt_tokens) == (1, answer.json()["usage"]["prompt_tokens"])
    assert quotas.counts_tokens("other") and not quotas.counts_tokens(TEAM)
    await quotas.aclose()


async def test_with_room_to_spare_the_worker_counts_the_prompt_on_dispatch_and_the_reservation_stays_exact():
    """After one admission with ample room, later requests skip the Tokenize round trip: the worker
    reports the count in its first message and the same exact reservation is made before any output."""
    quotas = quota_service("defaults: {requests_per_minute: 1000, tokens_per_minute: 100000}")
    async with FakeWorker(FakeConfig(model=MODEL)) as chat:
        async with running_gateway({MODEL: [chat]}, **with_quotas(quotas)) as gw:
            answers = []
            for max_tokens in (5, 7, 9):
                answer = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": max_tokens})
                assert answer.status_code == 200
                answers.append(answer)
            assert len(chat.servicer.tokenize_requests) == 1, "only the first request counted before dispatch"
            assert [r.report_prompt_tokens for r in chat.servicer.generate_requests] == [False, True, True]
            # Each response's remaining tokens: the earlier ones settled, this one reserved prompt + max_tokens.
            used = 0
            for answer, max_tokens in zip(answers, (5, 7, 9)):
                usage = answer.json()["usage"]
                assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 100000 - used - (usage["prompt_tokens"] + max_tokens)
                used += usage["total_tokens"]
            streamed = await gw.client.post("/v1/chat/completions",
                                            json={"model": MODEL, "messages": USER, "max_tokens": 4, "stream": True})
            assert streamed.status_code == 200 and parse_sse(streamed.text)[-1] == "[DONE]"
            assert len(chat.servicer.tokenize_requests) == 1
    today = dt.datetime.now(dt.timezone.utc).date()
    rows = await quotas.usage(TEAM, today, today, UsageGroupBy.MODEL)
    assert [(r.requests, r.prompt_tokens) for r in rows] == [(4, 4 * answers[0].json()["usage"]["prompt_tokens"])]
    await quotas.aclose()


async def test_near_the_limit_the_prompt_is_counted_before_dispatch():
    """Little room left (less than twice the most a request may reserve, here one full context of 256
    tokens): every request is counted and admitted before it reaches a worker, so a refusal costs the
    worker nothing."""
    quotas = quota_service("defaults: {tokens_per_minute: 500}")
    async with FakeWorker(FakeConfig(model=MODEL)) as chat:
        async with running_gateway({MODEL: [chat]}, **with_quotas(quotas)) as gw:
            for _ in range(2):
                answer = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 5})
                assert answer.status_code == 200
            assert len(chat.servicer.tokenize_requests) == 2
            assert not any(r.report_prompt_tokens for r in chat.servicer.generate_requests)
    await quotas.aclose()


async def test_a_refusal_after_dispatch_cancels_the_worker_call_and_withdraws_the_shortcut():
    """The room seen at the last admission was gone by the time the count came (here: an admin cut
    the limit): the exact reservation refuses with 429, the Generate call is cancelled, nothing is
    charged, and the next request of the team is counted and refused before dispatch."""
    from gateway.quota.limits import TEAM_SCOPE, QuotaLimits

    quotas = quota_service("defaults: {tokens_per_minute: 100000}")
    async with FakeWorker(FakeConfig(model=MODEL, first_token_delay_s=0.2)) as chat:
        async with running_gateway({MODEL: [chat]}, **with_quotas(quotas)) as gw:
            ok = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 5})
            assert ok.status_code == 200
            quotas._limits.set_override(TEAM, TEAM_SCOPE, QuotaLimits(tokens_per_minute=10))
            refused = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 5})
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert chat.servicer.generate_requests[-1].report_prompt_tokens
            for _ in range(50):
                if chat.servicer.generate_requests[-1].request_id in chat.servicer.cancelled:
                    break
                await asyncio.sleep(0.02)
            assert chat.servicer.generate_requests[-1].request_id in chat.servicer.cancelled
            dispatched = len(chat.servicer.generate_requests)
            again = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 5})
            assert again.status_code == 429
            assert len(chat.servicer.generate_requests) == dispatched, "refused before dispatch this time"
            assert len(chat.servicer.tokenize_requests) == 2
    today = dt.datetime.now(dt.timezone.utc).date()
    rows = await quotas.usage(TEAM, today, today, UsageGroupBy.MODEL)
    assert [r.requests for r in rows] == [1]
    await quotas.aclose()


async def test_a_prompt_of_token_ids_is_counted_by_its_ids_without_a_tokenize_call():
    """A token-id prompt's count is its length, known before dispatch: it is admitted with the exact
    reservation at once (no Tokenize round trip, no count asked of the worker on dispatch), and ids
    outside the vocabulary are refused before the quota reserves anything. A text prompt is counted by
    the worker on dispatch (a concurrency limit is in play: admitted first, extended once counted)."""
    quotas = quota_service("defaults: {tokens_per_minute: 100000, max_concurrent: 10}")
    ids = [1000, 1001, 1002, 1003, 1004, 1005, 1006]
    async with FakeWorker(FakeConfig(model=MODEL)) as chat:
        async with running_gateway({MODEL: [chat]}, **with_quotas(quotas)) as gw:
            answer = await gw.client.post("/v1/completions", json={"model": MODEL, "prompt": ids, "max_tokens": 5})
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"]["prompt_tokens"] == len(ids)
            assert int(answer.headers["x-ratelimit-remaining-tokens"]) == 100000 - (len(ids) + 5)
            streamed = await gw.client.post("/v1/completions", json={"model": MODEL, "prompt": [ids, ids[:3]],
                                                                      "max_tokens": 2, "stream": True})
            assert streamed.status_code == 200 and parse_sse(streamed.text)[-1] == "[DONE]"
            assert chat.servicer.tokenize_requests == []
            assert not any(r.report_prompt_tokens for r in chat.servicer.generate_requests)
            dispatched = len(chat.servicer.generate_requests)
            beyond = await gw.client.post("/v1/completions", json={"model": MODEL, "prompt": [5, 10**6], "max_tokens": 2})
            assert beyond.status_code == 400
            assert beyond.json()["error"]["type"] == "invalid_request_error"
            assert "out of range" in beyond.json()["error"]["message"]
            assert len(chat.servicer.generate_requests) == dispatched
            text = await gw.client.post("/v1/completions", json={"model": MODEL, "prompt": "three short words", "max_tokens": 2})
            assert text.status_code == 200 and chat.servicer.tokenize_requests == []
            assert chat.servicer.generate_requests[-1].report_prompt_tokens
    today = dt.datetime.now(dt.timezone.utc).date()
    [row] = await quotas.usage(TEAM, today, today, UsageGroupBy.DAY)
    assert row.prompt_tokens == len(ids) + (len(ids) + 3) + 3 and row.requests == 3
    await quotas.aclose()
