"""The gateway while one model's worker is down or restarting: that model gets 503 with Retry-After,
the others serve, /readyz and /v1/models say which can serve, and a restart (another process at the
worker's address) is counted in /metrics."""
from __future__ import annotations

import asyncio
import re
import time

import pytest
from fake_worker import FakeConfig, FakeWorker, running_gateway

from gateway.settings import RoutingSettings

pytestmark = pytest.mark.anyio

CHAT, EMBED = "fake-chat", "fake-embed"
USER = [{"role": "user", "content": "hello"}]


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def restarts_metric(text: str, model: str, address: str) -> float:
    line = re.search(rf'^ward_gateway_worker_restarts_total{{model_name="{model}",worker="{address}"}} (\S+)$',
                     text, re.MULTILINE)
    assert line, text
    return float(line.group(1))


async def test_a_model_whose_worker_is_down_gets_503_with_retry_after_while_the_other_serves():
    chat_worker = FakeWorker(FakeConfig(model=CHAT, worker_id="chat-1"))
    embed_worker = FakeWorker(FakeConfig(model=EMBED, task="embed", worker_id="embed-1"))
    async with chat_worker, embed_worker, running_gateway({CHAT: [chat_worker], EMBED: [embed_worker]}) as gw:
        await chat_worker.stop(0)  # crashed
        await until(lambda: not gw.pool.is_ready(CHAT))

        refused = await gw.client.post("/v1/chat/completions", json={"model": CHAT, "messages": USER})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "no_ready_worker"
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
        embedded = await gw.client.post("/v1/embeddings", json={"model": EMBED, "input": "still here"})
        assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 8

        ready = await gw.client.get("/readyz")  # still in the load balancer: EMBED serves
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "draining": False, "models": {
            CHAT: {"ready": False, "ready_workers": 0, "workers": 1},
            EMBED: {"ready": True, "ready_workers": 1, "workers": 1}}}
        cards = {m["id"]: m["ready"] for m in (await gw.client.get("/v1/models")).json()["data"]}
        assert cards == {CHAT: False, EMBED: True}
        assert (await gw.client.get(f"/v1/models/{CHAT}")).json()["ready"] is False

        await embed_worker.stop(0)  # nothing can serve now
        await until(lambda: not gw.pool.is_ready(EMBED))
        nothing = await gw.client.get("/readyz")
        assert nothing.status_code == 503 and nothing.json()["ready"] is False


async def test_another_process_at_a_workers_address_is_counted_as_a_restart_and_a_blip_is_not():
    worker = FakeWorker(FakeConfig(model=CHAT, worker_id="first"))
    async with worker, running_gateway({CHAT: [worker]}) as gw:
        handle = gw.pool.handles(CHAT)[0]
        assert restarts_metric((await gw.client.get("/metrics")).text, CHAT, worker.address) == 0

        await worker.stop(0)
        await until(lambda: not handle.ready)
        worker.config.worker_id = "second"  # a new process on the same port
        await worker.start()
        await until(lambda: handle.ready)
        chat = await gw.client.post("/v1/chat/completions", json={"model": CHAT, "messages": USER})
        assert chat.status_code == 200
        assert restarts_metric((await gw.client.get("/metrics")).text, CHAT, worker.address) == 1

        await worker.stop(0)  # the same process unreachable for a moment (a network blip)
        await until(lambda: not handle.ready)
        await worker.start()
        await until(lambda: handle.ready)
        assert restarts_metric((await gw.client.get("/metrics")).text, CHAT, worker.address) == 1


async def test_readyz_waits_for_every_workers_first_poll_before_saying_ready():
    chat_worker = FakeWorker(FakeConfig(model=CHAT))
    stuck = FakeWorker(FakeConfig(model=EMBED, task="embed"))
    stuck.servicer.hang_health = True  # its first poll takes the whole poll timeout
    routing = RoutingSettings(poll_interval_s=0.1, poll_timeout_s=3.0, dead_after_s=5.0)
    async with chat_worker, stuck, running_gateway(
        {CHAT: [chat_worker], EMBED: [stuck]}, wait_ready=False, routing=routing
    ) as gw:
        await until(lambda: gw.pool.is_ready(CHAT))
        early = await gw.client.get("/readyz")
        assert early.status_code == 503 and early.json()["models"][CHAT]["ready"] is True
        await until(lambda: all(h.polled for h in gw.pool.handles()), timeout=10)
        later = await gw.client.get("/readyz")
        assert later.status_code == 200 and later.json()["models"][EMBED]["ready"] is False
