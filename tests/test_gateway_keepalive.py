"""Errors never tear down connections: an unexpected failure is a complete OpenAI-shaped 500, and the
client's next request on the same keep-alive connection is served (uvicorn closes the connection of
an app that raises, which the client saw as ECONNRESET on its next request)."""
from __future__ import annotations

import asyncio
import json

import pytest
from fake_worker import FakeConfig, FakeWorker, running_gateway, serving_http
from http_wire import KeepAliveConnection

from gateway.hooks import NoopHooks

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
API_KEY = "sk-test-gateway-key"  # running_gateway's key
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}).encode()
JSON_HEADERS = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}


class HookWithABug(NoopHooks):
    """A request hook that fails in a way no handler expects (a bug, not an OpenAIError)."""

    def __init__(self) -> None:
        self.calls = 0

    async def before_dispatch(self, ctx) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in a request hook")


def two_requests_on_one_connection(url: str):
    with KeepAliveConnection(url) as connection:
        failed = connection.request("POST", "/v1/chat/completions", body=CHAT, headers=JSON_HEADERS)
        served = connection.request("POST", "/v1/chat/completions", body=CHAT, headers=JSON_HEADERS)
        health = connection.request("GET", "/healthz")
    return failed, served, health


async def test_an_unexpected_error_is_an_openai_500_and_the_same_connection_serves_the_next_requests():
    hooks = HookWithABug()
    async with (
        FakeWorker(FakeConfig(model=MODEL)) as worker,
        running_gateway({MODEL: [worker]}, hooks=hooks) as harness,
        serving_http(harness.app) as url,
    ):
        failed, served, health = await asyncio.to_thread(two_requests_on_one_connection, url)
    assert failed.status == 500
    assert failed.json() == {
        "error": {
            "message": "The gateway failed to process the request.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    assert failed.headers.get("connection") != "close"
    assert served.status == 200 and served.json()["choices"][0]["finish_reason"] in ("stop", "length")
    assert health.status == 200
