"""Routing across workers: load balancing, health, failover before the first token, worker loss."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from fake_worker import FakeConfig, FakeWorker, parse_sse, running_gateway

from gateway.settings import RoutingSettings
from gateway.workers.pool import BUSY_GRACE_FACTOR

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
USER = [{"role": "user", "content": "hello"}]


def served_by(*workers: FakeWorker) -> Counter:
    return Counter({w.config.worker_id: len(w.servicer.generate_requests) for w in workers})


async def until(predicate, timeout: float = 3.0) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


@pytest.fixture
async def two():
    a = FakeWorker(FakeConfig(model=MODEL, worker_id="a"))
    b = FakeWorker(FakeConfig(model=MODEL, worker_id="b"))
    async with a, b, running_gateway({MODEL: [a, b]}) as gw:
        gw.a, gw.b = a, b
        yield gw


async def chat(gw, **fields):
    return await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **fields})


async def test_equally_loaded_workers_take_turns(two):
    for w in (two.a, two.b):
        w.servicer.load_override = {"num_running": 0, "kv_usage": 0.0}  # identical, whatever is running
    await asyncio.sleep(0.25)  # a poll of each with the override
    for _ in range(10):
        assert (await chat(two)).status_code == 200
    assert served_by(two.a, two.b) == Counter({"a": 5, "b": 5})


async def test_other_gateways_load_counts_but_ours_is_not_counted_twice(two):
    handle_a, handle_b = two.pool.handles(MODEL)
    two.a.servicer.load_override = {"num_running": 3, "num_waiting": 1, "kv_usage": 0.25}
    await until(lambda: handle_a.load is not None and handle_a.load.num_running == 3)
    assert handle_a.load_score() == pytest.approx(4.25)  # another gateway's four requests
    with handle_b.lease(), handle_b.lease():
        assert handle_b.load_score() == pytest.approx(2.0)
        assert two.pool.pick(MODEL) is handle_b
        with handle_b.lease(), handle_b.lease(), handle_b.lease():
            assert two.pool.pick(MODEL) is handle_a
        two.b.servicer.load_override = {"num_running": 2, "kv_usage": 0.0}  # b sees our two requests
        await until(lambda: handle_b.load.num_running == 2)
        assert handle_b.load_score() == pytest.approx(2.0)  # counted once, not 2 + 2


async def test_concurrent_streams_are_spread_by_load(two):
    for w in (two.a, two.b):
        w.config.token_delay_s = 0.02
    results = await asyncio.gather(*(chat(two, stream=True, seed=i) for i in range(8)))
    assert all(r.status_code == 200 and r.text.endswith("data: [DONE]\n\n") for r in results)
    assert served_by(two.a, two.b) == Counter({"a": 4, "b": 4})


async def test_a_busy_worker_gets_no_new_requests(two):
    two.a.servicer.load_override = {"num_waiting": 50, "kv_usage": 0.95}
    handle_a = next(h for h in two.pool.handles(MODEL) if h.address == two.a.address)
    await until(lambda: handle_a.load is not None and handle_a.load.num_waiting == 50)
    for _ in range(6):
        await chat(two)
    assert served_by(two.a, two.b) == Counter({"b": 6})


async def test_a_draining_or_unready_worker_leaves_rotation(two):
    two.a.servicer.draining = True
    await until(lambda: not two.pool.handles(MODEL)[0].ready)
    two.b.servicer.ready = False
    await until(lambda: not two.pool.is_ready(MODEL))
    assert (await chat(two)).status_code == 503
    two.a.servicer.draining = False
    await until(lambda: two.pool.is_ready(MODEL))
    assert (await chat(two)).status_code == 200
    assert served_by(two.a, two.b) == Counter({"a": 1})


async def test_a_stopped_worker_leaves_rotation_within_a_second_and_comes_back(two):
    await two.a.stop(0)
    handle_a = next(h for h in two.pool.handles(MODEL) if h.address == two.a.address)
    assert await until(lambda: not handle_a.ready) < 1.0
    before = len(two.b.servicer.generate_requests)
    for _ in range(4):
        assert (await chat(two)).status_code == 200
    assert len(two.b.servicer.generate_requests) == before + 4
    await two.a.start()  # same address
    await until(lambda: handle_a.ready, timeout=5.0)
    ready = await two.client.get("/readyz")
    assert ready.json()["models"][MODEL] == {"ready": True, "ready_workers": 2, "workers": 2}


async def test_a_request_fails_over_to_another_worker_before_the_first_token():
    a = FakeWorker(FakeConfig(model=MODEL, worker_id="a"))
    b = FakeWorker(FakeConfig(model=MODEL, worker_id="b"))
    slow_polls = RoutingSettings(poll_interval_s=30, poll_timeout_s=1, max_attempts=2)
    async with a, b, running_gateway({MODEL: [a, b]}, routing=slow_polls) as gw:
        await a.stop(0)  # the pool has not noticed: polls are 30 s apart
        outcomes = [await chat(gw) for _ in range(3)]
        assert [r.status_code for r in outcomes] == [200, 200, 200]
        assert len(b.servicer.generate_requests) == 3
        handle_a = next(h for h in gw.pool.handles(MODEL) if h.address == a.address)
        assert not handle_a.ready  # taken out by the failed call itself
        assert (await gw.client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})).status_code == 400


async def test_worker_death_mid_stream_sends_an_error_event_then_closes():
    worker = FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.05))
    async with worker, running_gateway({MODEL: [worker]}) as gw:
        request = asyncio.ensure_future(chat(gw, stream=True, max_tokens=200, ignore_eos=True))
        await until(lambda: worker.servicer.active)
        await asyncio.sleep(0.2)
        killed = time.monotonic()
        await worker.stop(0)
        r = await asyncio.wait_for(request, 5)
        assert time.monotonic() - killed < 5
    assert r.status_code == 200  # headers were sent with the first token
    events = parse_sse(r.text)
    assert "[DONE]" not in events
    *chunks, error = events
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
    assert set(error) == {"error"}
    assert error["error"]["code"] == "worker_lost" and error["error"]["type"] == "server_error"


async def test_a_worker_that_stops_answering_health_is_busy_first_and_dead_only_after_the_grace():
    worker = FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.1))
    routing = RoutingSettings(poll_interval_s=0.1, poll_timeout_s=0.2, dead_after_s=0.5)
    async with worker, running_gateway({MODEL: [worker]}, routing=routing) as gw:
        request = asyncio.ensure_future(chat(gw, stream=True, max_tokens=200, ignore_eos=True))
        await until(lambda: worker.servicer.active)
        hung = time.monotonic()
        worker.servicer.hang_health = True  # still streaming, but no longer answering health checks
        await asyncio.sleep(3 * routing.dead_after_s)
        assert not request.done()  # a worker whose polls time out may be busy: its streams go on
        assert not gw.pool.is_ready(MODEL)  # ... but it gets no new work meanwhile
        r = await asyncio.wait_for(request, 8)
        assert time.monotonic() - hung < BUSY_GRACE_FACTOR * routing.dead_after_s + 2.5
        assert parse_sse(r.text)[-1]["error"]["code"] == "worker_lost"
        await until(lambda: worker.servicer.cancelled)  # the gateway cancelled the call on the worker


async def test_a_worker_serving_another_model_never_becomes_ready():
    worker = FakeWorker(FakeConfig(model="something-else"))
    async with worker, running_gateway({MODEL: [worker]}, wait_ready=False) as gw:
        await until(lambda: worker.servicer.health_polls >= 3)
        handle = gw.pool.handles(MODEL)[0]
        assert not handle.ready and "something-else" in handle.detail
        assert (await gw.client.get("/readyz")).status_code == 503
        assert (await chat(gw)).status_code == 503


async def test_workers_are_reached_over_mutual_tls_when_configured(tmp_path):
    import grpc
    from auth_tls_certs import TestPKI

    pki = TestPKI(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key_pem(), pki.server.cert_pem())],
        root_certificates=pki.ca.ca_file.read_bytes(),
        require_client_auth=True,
    )
    trusted = {"ca_file": str(pki.ca.ca_file), "cert_file": str(pki.gateway.cert), "key_file": str(pki.gateway.key)}
    untrusted = {**trusted, "cert_file": str(pki.other_gateway.cert), "key_file": str(pki.other_gateway.key)}
    async with FakeWorker(FakeConfig(model=MODEL), credentials=credentials) as worker:
        async with running_gateway({MODEL: [worker]}, settings={"auth": {"worker_tls": trusted}}) as gw:
            assert (await chat(gw)).status_code == 200
        async with running_gateway(
            {MODEL: [worker]}, settings={"auth": {"worker_tls": untrusted}}, wait_ready=False
        ) as gw:
            await asyncio.sleep(0.5)
            assert not gw.pool.is_ready(MODEL)  # the worker refuses a certificate from another CA
            assert (await chat(gw)).status_code == 503
        async with running_gateway({MODEL: [worker]}, wait_ready=False) as gw:
            await asyncio.sleep(0.5)
            assert not gw.pool.is_ready(MODEL)  # and plaintext does not reach it at all
