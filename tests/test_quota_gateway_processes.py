"""Acceptance over HTTP: three real gateway processes (uvicorn, the gateway app, QuotaHooks) share one
Redis (DB 2) in front of one fake worker process, and are hammered at once by clients spread over all
three. Admissions are exact across them, and every response carries OpenAI's headers and shapes."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import time

import httpx2

from fake_worker import FakeConfig, FakeWorker, FakeWorkerServicer

from gateway.quota.testing import delete_prefix, free_port, redis_url, require_redis, unique_prefix

URL = redis_url(2)
MODEL = "fake-chat"
API_KEY = "sk-quota-gateway-processes"
TEAM = "ed"
USER = [{"role": "user", "content": "three short words"}]


def _gateway_process(worker: str, port: int, prefix: str, quota_yaml: str, ready, stop) -> None:
    """One gateway: the real app with QuotaHooks on Redis, served by uvicorn until `stop` is set."""
    import uvicorn

    from gateway.app import create_app
    from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
    from gateway.quota.hooks import QuotaHooks, quota_error_converters
    from gateway.quota.redis_store import RedisQuotaStore
    from gateway.quota.service import QuotaService
    from gateway.quota.settings import QuotaSettings
    from gateway.settings import GatewaySettings

    async def serve() -> None:
        quota_settings = QuotaSettings(redis_url=URL, key_prefix=prefix, redis_timeout_s=2.0)
        quotas = QuotaService(
            RedisQuotaStore.from_url(URL, key_prefix=prefix, timeout_s=2.0),
            StaticQuotaConfig(parse_quota_config(quota_yaml)),
            quota_settings,
        )
        settings = GatewaySettings(models={MODEL: {"workers": [worker]}}, api_keys={API_KEY: TEAM})
        app = create_app(settings, hooks=QuotaHooks(quotas), error_converters=quota_error_converters())
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        await app.state.ward.pool.wait_until_ready(10.0, every_worker=True)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.should_exit = True
        await task

    asyncio.run(serve())


class CountingServicer(FakeWorkerServicer):
    """Counts generations between their start (after the gateway admitted them) and the moment the
    usage message is sent (before the gateway can settle them): a span inside every admission, so
    its peak can under-report concurrency but never over-report it."""

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        self.running = 0
        self.peak = 0

    async def Generate(self, request, context):  # noqa: N802 - gRPC method name
        self.running += 1
        self.peak = max(self.peak, self.running)
        counted = True
        try:
            async for message in super().Generate(request, context):
                if counted and message.HasField("usage"):
                    self.running -= 1
                    counted = False
                yield message
        finally:
            if counted:
                self.running -= 1


class Gateways:
    """A fake worker in this event loop and three gateway processes in front of it."""

    def __init__(self, quota_yaml: str, worker_config: FakeConfig):
        self.quota_yaml = quota_yaml
        self.worker = FakeWorker(worker_config)
        self.worker.servicer = self.servicer = CountingServicer(worker_config)
        self.prefix = unique_prefix("gwp")
        self.ctx = mp.get_context("spawn")
        self.stop = self.ctx.Event()
        self.procs: list = []
        self.urls: list[str] = []

    async def __aenter__(self) -> Gateways:
        require_redis(URL)
        await self.worker.start()
        events = []
        for _ in range(3):
            port, ready = free_port(), self.ctx.Event()
            args = (self.worker.address, port, self.prefix, self.quota_yaml, ready, self.stop)
            proc = self.ctx.Process(target=_gateway_process, args=args)
            proc.start()
            self.procs.append(proc)
            events.append(ready)
            self.urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while not all(e.is_set() for e in events):  # the worker must keep serving while they start
            if time.monotonic() > deadline:
                raise RuntimeError("a gateway process did not become ready")
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        for proc in self.procs:
            while proc.is_alive() and proc.exitcode is None:
                await asyncio.sleep(0.05)
                proc.join(timeout=0)
        await self.worker.stop()
        delete_prefix(URL, self.prefix)


async def hammer(urls: list[str], clients_per_gateway: int, attempts: int, body: dict) -> list[httpx2.Response]:
    responses: list[httpx2.Response] = []
    headers = {"authorization": f"Bearer {API_KEY}"}

    async def client(http: httpx2.AsyncClient) -> None:
        for _ in range(attempts):
            responses.append(await http.post("/v1/chat/completions", json=body))

    https = [httpx2.AsyncClient(base_url=u, headers=headers, timeout=30) for u in urls]
    try:
        await asyncio.gather(*(client(h) for h in https for _ in range(clients_per_gateway)))
    finally:
        for h in https:
            await h.aclose()
    return responses


def test_three_gateway_processes_admit_exactly_the_rate_limit_with_openai_headers_and_bodies():
    async def run() -> list[httpx2.Response]:
        async with Gateways("defaults: {requests_per_minute: 40, tokens_per_minute: 1000000}", FakeConfig(model=MODEL)) as gw:
            return await hammer(gw.urls, clients_per_gateway=8, attempts=4, body={"model": MODEL, "messages": USER})

    responses = asyncio.run(run())
    statuses = [r.status_code for r in responses]
    assert len(statuses) == 3 * 8 * 4
    assert statuses.count(200) == 40 and statuses.count(429) == len(statuses) - 40
    for r in responses:
        assert {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"} <= set(r.headers)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded" and r.json()["error"]["type"] == "requests"
            assert int(r.headers["retry-after"]) >= 1 and r.headers["x-ratelimit-remaining-requests"] == "0"
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200)
    assert remaining == list(range(40))  # every admission saw the one shared window


def test_three_gateway_processes_never_run_more_than_max_concurrent():
    async def run() -> tuple[list[int], int]:
        config = FakeConfig(model=MODEL, first_token_delay_s=0.05, token_delay_s=0.01, natural_length=3)
        async with Gateways("defaults: {max_concurrent: 3}", config) as gw:
            responses = await hammer(gw.urls, clients_per_gateway=4, attempts=5, body={"model": MODEL, "messages": USER})
            return [r.status_code for r in responses], gw.servicer.peak

    statuses, peak = asyncio.run(run())
    assert set(statuses) == {200, 429}
    assert peak <= 3
    assert peak == 3, "the load never reached the limit: the test proves nothing"
