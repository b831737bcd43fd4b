"""Quota answers over HTTP: OpenAI's header names and formats, its 429/503 bodies, and the official
`openai` client reading them (error types, and its built-in retry waiting for Retry-After)."""
from __future__ import annotations

import time

import httpx2
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
from gateway.quota.errors import QuotaExceeded, QuotaUnavailable
from gateway.quota.headers import WindowState, format_duration, rate_limit_headers, retry_after_headers
from gateway.quota.http import install_quota_error_handlers, quota_exceeded_response
from gateway.quota.limits import TEAM_SCOPE, LimitKind
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import QuotaSettings

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (0.0004, "0s"), (0.02, "20ms"), (0.999, "999ms"), (1, "1s"), (8.64, "8.64s"), (59.9999, "1m0s"),
     (60, "1m0s"), (360, "6m0s"), (86.4, "1m26.4s"), (3723.5, "1h2m3.5s"), (86400, "24h0m0s")],
)
def test_durations_are_written_the_way_openai_writes_them(seconds, text):
    assert format_duration(seconds) == text


def test_header_names_and_retry_after_forms():
    headers = rate_limit_headers(WindowState(500, 0, 0.5), WindowState(30000, 29000, 60))
    assert headers == {
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "500ms",
        "x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "1m0s",
    }
    assert rate_limit_headers(None, None) == {}
    assert retry_after_headers(1.2) == {"retry-after": "2", "retry-after-ms": "1200"}
    assert retry_after_headers(0.0001) == {"retry-after": "1", "retry-after-ms": "1"}
    assert retry_after_headers(None) == {"x-should-retry": "false"}


def _exceeded(kind: LimitKind, retry: float | None) -> QuotaExceeded:
    return QuotaExceeded(
        team="ed", limit_kind=kind, scope=TEAM_SCOPE, limit=100, used=95, requested=10, retry_after_s=retry,
        headers={"x-ratelimit-limit-tokens": "100"},
    )


def test_429_bodies_have_openai_types_and_codes():
    import json

    rate = quota_exceeded_response(_exceeded(LimitKind.TOKENS_PER_MINUTE, 6.0))
    body = json.loads(rate.body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert (body["error"]["type"], body["error"]["code"], body["error"]["param"]) == ("tokens", "rate_limit_exceeded", None)
    assert "Please try again in 6s." in body["error"]["message"]
    assert rate.status_code == 429 and rate.headers["retry-after"] == "6" and rate.headers["x-ratelimit-limit-tokens"] == "100"

    budget = json.loads(quota_exceeded_response(_exceeded(LimitKind.TOKENS_PER_DAY, 7200.0)).body)
    assert (budget["error"]["type"], budget["error"]["code"]) == ("insufficient_quota", "insufficient_quota")

    never = quota_exceeded_response(_exceeded(LimitKind.REQUESTS_PER_MINUTE, None))
    assert "retry-after" not in never.headers and never.headers["x-should-retry"] == "false"
    assert json.loads(never.body)["error"]["type"] == "requests"


class Clock:
    """Real time plus an offset the test can jump forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def chat_app(quotas: QuotaService, attempts: list[float]) -> FastAPI:
    """The smallest chat-completions route that uses quotas the way the gateway will."""
    app = FastAPI()
    install_quota_error_handlers(app)

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> JSONResponse:
        attempts.append(time.monotonic())
        body = await request.json()
        admission = await quotas.admit("ed", model=body["model"], reserve_tokens=10 + body.get("max_tokens", 16))
        await quotas.settle(admission, prompt_tokens=10, completion_tokens=1)
        completion = {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }
        return JSONResponse(completion, headers=admission.headers)

    @app.post("/v1/unavailable")
    async def unavailable() -> None:
        raise QuotaUnavailable("The quota store is unavailable; try again shortly.", retry_after_s=1.0)

    return app


def openai_client(app: FastAPI, max_retries: int) -> openai.AsyncOpenAI:
    transport = httpx2.ASGITransport(app=app)
    return openai.AsyncOpenAI(
        base_url="http://ward.test/v1", api_key="k", max_retries=max_retries,
        http_client=httpx2.AsyncClient(transport=transport, base_url="http://ward.test/v1"),
    )


async def test_the_openai_client_sees_headers_and_typed_429s():
    quotas = QuotaService(
        InMemoryQuotaStore(), StaticQuotaConfig(parse_quota_config("defaults: {requests_per_minute: 1, tokens_per_minute: 1000}")),
        QuotaSettings(redis_url=None),
    )
    client = openai_client(chat_app(quotas, []), max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - 15)
    assert raw.headers["x-ratelimit-reset-requests"] == "1m0s"
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert 59 <= int(err.response.headers["retry-after"]) <= 60
    assert err.response.headers["x-ratelimit-remaining-requests"] == "0"
    await quotas.aclose()


async def test_the_openai_clients_retry_waits_for_retry_after_and_then_succeeds():
    clock = Clock()
    quotas = QuotaService(
        InMemoryQuotaStore(clock=clock), StaticQuotaConfig(parse_quota_config("defaults: {requests_per_minute: 1}")),
        QuotaSettings(redis_url=None),
    )
    attempts: list[float] = []
    client = openai_client(chat_app(quotas, attempts), max_retries=2)
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
    clock.offset = 58.5  # the first request leaves the 60 s window 1.5 s from now
    attempts.clear()
    done = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}])
    assert done.choices[0].message.content == "ok"
    assert len(attempts) == 2  # one 429, then success
    gap = attempts[1] - attempts[0]
    assert 1.45 <= gap < 3.0, gap  # the client's own backoff would have been 0.5 s at most
    await quotas.aclose()


async def test_503_when_the_store_is_down_has_openai_shape():
    app = chat_app(None, [])  # type: ignore[arg-type]
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://ward.test") as http:
        response = await http.post("/v1/unavailable")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json() == {
        "error": {"message": "The quota store is unavailable; try again shortly.", "type": "server_error", "param": None, "code": "quota_unavailable"}
    }
