"""DNS worker discovery: workers that appear in or leave a model's DNS name join or leave rotation
while requests stream, with no failed request (gateway.workers.discovery)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import httpx
import pytest
from fake_worker import API_KEY, TEAM, FakeConfig, FakeWorker, serving_http
from pydantic import ValidationError

from gateway.app import create_app
from gateway.settings import GatewaySettings, RoutingSettings
from gateway.workers.channels import InsecureWorkerChannel
from gateway.workers.discovery import SystemResolver, format_address

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
NAME = "workers.ward.test"


class StubResolver:
    """A DNS server the test controls: ``answers[host]`` is the set of IPs the name has now."""

    def __init__(self) -> None:
        self.answers: dict[str, set[str]] = {}
        self.failing = False
        self.lookups = 0

    async def resolve(self, host: str, port: int) -> set[str]:
        self.lookups += 1
        if self.failing:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return {f"{ip}:{port}" for ip in self.answers[host]}


async def start_workers(hosts: list[str], **config) -> list[FakeWorker]:
    """Fake workers on several loopback addresses sharing one port, like pods behind a headless Service."""
    first = await FakeWorker(FakeConfig(**config), host=hosts[0]).start()
    rest = [await FakeWorker(FakeConfig(**config), host=h, port=first.port).start() for h in hosts[1:]]
    return [first, *rest]


@contextlib.asynccontextmanager
async def gateway_on(resolver: StubResolver, port: int, **models_extra):
    routing = RoutingSettings(poll_interval_s=0.1, poll_timeout_s=0.5, dead_after_s=1.0, dns_refresh_s=0.1)
    settings = GatewaySettings(
        models={MODEL: {"dns": [f"{NAME}:{port}"], **models_extra}},
        api_keys={API_KEY: TEAM},
        routing=routing,
        auth={"insecure_worker_channel": True},  # the stub's name is not loopback, its addresses are
    )
    app = create_app(settings, resolver=resolver)
    async with app.router.lifespan_context(app), serving_http(app) as base_url:
        yield app.state.ward.pool, base_url


async def stream_completion(client: httpx.AsyncClient) -> tuple[int, str | None, bool]:
    """One streamed completion: (status, finish reason, whether [DONE] arrived)."""
    body = {"model": MODEL, "prompt": "hello there", "max_tokens": 40, "stream": True}
    finish, done = None, False
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                for choice in event.get("choices", []):
                    finish = choice.get("finish_reason") or finish
        return response.status_code, finish, done


async def until(condition, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def addresses(pool) -> set[str]:
    return {h.address for h in pool.handles(MODEL)}


@pytest.mark.slow
async def test_workers_join_and_leave_through_dns_under_load_with_no_failed_request():
    a, b, c = await start_workers(["127.0.0.2", "127.0.0.3", "127.0.0.4"], natural_length=12, token_delay_s=0.02)
    resolver = StubResolver()
    resolver.answers[NAME] = {"127.0.0.2"}
    c.servicer.ready = False  # c shows up in DNS while still loading its model
    results: list[tuple[int, str | None, bool]] = []
    stop = asyncio.Event()
    try:
        async with gateway_on(resolver, a.port) as (pool, base_url):
            assert addresses(pool) == {a.address}  # resolved before the first request
            assert await pool.wait_until_ready(5.0)

            async def client_loop() -> None:
                headers = {"authorization": f"Bearer {API_KEY}"}
                async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
                    while not stop.is_set():
                        results.append(await stream_completion(client))

            load = [asyncio.create_task(client_loop()) for _ in range(6)]
            await until(lambda: len(results) >= 6, what="the first answers")

            # Scale out: b and c appear in DNS; b serves at once, c only once it is ready.
            resolver.answers[NAME] = {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
            await until(lambda: len(b.servicer.generate_requests) >= 3, what="b to take traffic")
            assert addresses(pool) == {a.address, b.address, c.address}
            assert c.servicer.generate_requests == []  # in DNS but not ready: out of rotation
            c.servicer.ready = True
            await until(lambda: len(c.servicer.generate_requests) >= 3, what="c to take traffic")

            # Rolling update of a: it leaves DNS with streams on it; they finish, nothing new goes there.
            await until(lambda: len(a.servicer.active) >= 1, what="a stream on a")
            resolver.answers[NAME] = {"127.0.0.3", "127.0.0.4"}
            await until(lambda: a.address not in addresses(pool), what="a to leave the pool")
            on_a = set(a.servicer.active)
            sent_to_a = len(a.servicer.generate_requests)
            await until(lambda: not a.servicer.active, what="a's streams to finish")
            assert on_a <= set(a.servicer.completed) and not a.servicer.cancelled
            assert len(a.servicer.generate_requests) == sent_to_a  # no request reached a after it left DNS
            polls = a.servicer.health_polls
            await asyncio.sleep(0.5)
            assert a.servicer.health_polls - polls <= 1  # drained: the gateway stopped watching a
            await a.stop(grace=1.0)

            served_before = len(b.servicer.generate_requests) + len(c.servicer.generate_requests)
            await until(
                lambda: len(b.servicer.generate_requests) + len(c.servicer.generate_requests) >= served_before + 6,
                what="b and c to carry the load",
            )
            stop.set()
            await asyncio.gather(*load)
    finally:
        stop.set()
        for worker in (a, b, c):
            await worker.stop()
    assert len(results) >= 30
    failed = [r for r in results if r != (200, "stop", True)]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:3]}"


async def test_a_failed_lookup_keeps_the_last_workers_and_an_answer_replaces_them():
    a, b = await start_workers(["127.0.0.5", "127.0.0.6"])
    resolver = StubResolver()
    resolver.answers[NAME] = {"127.0.0.5"}
    try:
        async with gateway_on(resolver, a.port) as (pool, base_url):
            assert await pool.wait_until_ready(5.0)
            resolver.failing = True
            lookups = resolver.lookups
            await until(lambda: resolver.lookups >= lookups + 3, what="lookups during the outage")
            assert addresses(pool) == {a.address}  # a DNS outage empties nothing
            async with httpx.AsyncClient(base_url=base_url, headers={"authorization": f"Bearer {API_KEY}"}) as client:
                assert await stream_completion(client) == (200, "stop", True)
            resolver.answers[NAME] = {"127.0.0.6"}
            resolver.failing = False
            await until(lambda: addresses(pool) == {b.address}, what="the new answer to apply")
            assert await pool.wait_until_ready(5.0)
            async with httpx.AsyncClient(base_url=base_url, headers={"authorization": f"Bearer {API_KEY}"}) as client:
                assert await stream_completion(client) == (200, "stop", True)
            assert len(b.servicer.generate_requests) == 1
    finally:
        for worker in (a, b):
            await worker.stop()


async def test_a_worker_both_listed_and_discovered_is_watched_once():
    (a,) = await start_workers(["127.0.0.7"])
    resolver = StubResolver()
    resolver.answers[NAME] = {"127.0.0.7"}
    try:
        async with gateway_on(resolver, a.port, workers=[a.address]) as (pool, _):
            await asyncio.sleep(0.3)  # several discovery rounds
            assert [h.address for h in pool.handles(MODEL)] == [a.address]
    finally:
        await a.stop()


async def test_no_worker_in_dns_yet_means_not_ready_with_a_clear_503():
    resolver = StubResolver()
    resolver.answers[NAME] = set()
    async with gateway_on(resolver, 50051) as (pool, base_url):
        async with httpx.AsyncClient(base_url=base_url, headers={"authorization": f"Bearer {API_KEY}"}) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["models"][MODEL] == {"ready": False, "ready_workers": 0, "workers": 0}
            answer = await client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "no_ready_worker"


async def test_the_system_resolver_returns_every_address_of_a_name():
    found = await SystemResolver().resolve("localhost", 50051)
    assert "127.0.0.1:50051" in found
    assert all(address.endswith(":50051") for address in found)
    with pytest.raises(OSError):
        await SystemResolver().resolve("no-such-worker.invalid", 50051)


def test_ipv6_addresses_are_bracketed_like_grpc_targets():
    assert format_address("fd00::12", 50051) == "[fd00::12]:50051"
    assert format_address("10.0.0.7", 50051) == "10.0.0.7:50051"


def test_a_model_needs_workers_or_dns_names_in_host_port_form():
    with pytest.raises(ValidationError, match="`workers`"):
        GatewaySettings(models={"m": {}})
    with pytest.raises(ValidationError, match="not host:port"):
        GatewaySettings(models={"m": {"dns": ["ward-worker-m"]}})
    settings = GatewaySettings(models={"m": {"dns": ["ward-worker-m.ward.svc:50051"]}})
    assert settings.models["m"].dns == ["ward-worker-m.ward.svc:50051"] and settings.models["m"].workers == []


def test_a_remote_dns_name_needs_worker_tls():
    with pytest.raises(InsecureWorkerChannel, match="ward-worker-m.ward.svc:50051"):
        create_app(GatewaySettings(models={"m": {"dns": ["ward-worker-m.ward.svc:50051"]}}))


async def test_a_model_with_no_worker_in_dns_still_has_a_ready_workers_series():
    resolver = StubResolver()
    resolver.answers[NAME] = set()
    async with gateway_on(resolver, 50051) as (pool, base_url):
        async with httpx.AsyncClient(base_url=base_url) as client:
            text = (await client.get("/metrics")).text
    assert f'ward_gateway_model_ready_workers{{model_name="{MODEL}"}} 0.0' in text
