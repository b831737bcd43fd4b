"""A client that goes away cancels the worker call promptly (over real HTTP, served by uvicorn)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fake_worker import API_KEY, FakeConfig, FakeWorker, running_gateway, serving_http
from test_gateway_hooks import RecordingHooks

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "ignore_eos": True}


async def until(predicate, timeout: float = 3.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
async def served():
    hooks = RecordingHooks()
    worker = FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.05))
    async with worker, running_gateway({MODEL: [worker]}, hooks=hooks) as gw, serving_http(gw.app) as url:
        client = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=10)
        yield worker, gw, client, hooks
        await client.aclose()


async def kv_usage(gw) -> float:
    return (await gw.pool.handles(MODEL)[0].client.load_stats()).kv_usage


async def test_closing_a_stream_cancels_the_worker_call_and_frees_its_kv(served):
    worker, gw, client, hooks = served
    idle = await kv_usage(gw)
    async with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as r:
        assert r.status_code == 200
        received = 0
        async for _ in r.aiter_raw():
            received += 1
            if received == 3:
                assert await kv_usage(gw) > idle
                break
    assert await until(lambda: worker.servicer.cancelled) < 1.0
    assert worker.servicer.active == set() and await kv_usage(gw) == idle
    await until(lambda: "on_failure" in hooks.events)
    ctx = hooks.contexts[-1]
    assert ctx.cancelled and ctx.status_code == 499 and 0 < ctx.completion_tokens < 200
    assert gw.pool.handles(MODEL)[0].in_flight == 0


async def test_disconnect_while_waiting_for_a_non_streamed_response_cancels_too(served):
    worker, gw, client, hooks = served
    request = asyncio.ensure_future(client.post("/v1/chat/completions", json=BODY))
    await until(lambda: worker.servicer.active)
    request.cancel()  # closes the connection
    assert await until(lambda: worker.servicer.cancelled) < 1.0
    await until(lambda: "on_failure" in hooks.events)
    assert hooks.contexts[-1].cancelled


async def test_disconnect_before_the_first_token_cancels_the_call(served):
    worker, gw, client, hooks = served
    worker.config.first_token_delay_s = 5.0
    request = asyncio.ensure_future(client.post("/v1/chat/completions", json={**BODY, "stream": True}))
    await until(lambda: worker.servicer.active)
    request.cancel()
    assert await until(lambda: worker.servicer.cancelled) < 1.0
    await until(lambda: "on_failure" in hooks.events)
    assert "on_first_token" not in hooks.events


async def test_a_stream_whose_headers_cannot_be_sent_still_releases_the_worker_call():
    hooks = RecordingHooks()
    worker = FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.05))
    async with worker, running_gateway({MODEL: [worker]}, hooks=hooks) as gw:
        import json

        body = json.dumps({**BODY, "stream": True}).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "headers": [(b"authorization", f"Bearer {API_KEY}".encode()), (b"content-length", str(len(body)).encode())],
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.sleep(3600)

        async def send(message):
            raise OSError("connection reset by peer")  # the client is gone before the headers

        await gw.app(scope, receive, send)
        assert await until(lambda: worker.servicer.cancelled) < 1.0
        assert gw.pool.handles(MODEL)[0].in_flight == 0
        assert hooks.events[-1] == "on_failure" and hooks.contexts[-1].cancelled
