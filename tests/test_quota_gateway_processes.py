"""Acceptance over HTTP: three real gateway processes (uvicorn serving the app ``ward gateway`` builds:
identity, quotas, audit log) share one Redis (DB 7) in front of one fake worker, and are hammered at
once by clients spread over all three. Admissions are exact across them, and every response carries
OpenAI's headers and shapes."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import pathlib
import shutil
import tempfile
import time

import httpx2

from fake_worker import FakeConfig, FakeWorker, FakeWorkerServicer

from quota_support import delete_prefix, free_port, redis_url, require_redis, unique_prefix

URL = redis_url(7)
MODEL = "fake-chat"
API_KEY = "sk-quota-gateway-processes"
TEAM = "ed"
USER = [{"role": "user", "content": "three short words"}]


def _gateway_process(worker: str, port: int, prefix: str, quota_file: str, data_dir: str, ready, stop) -> None:
    """One gateway: the app ``ward gateway`` serves (identity, quotas on Redis, audit log in its own
    SQLite database), served by uvicorn until `stop` is set."""
    import uvicorn

    from gateway.cli import build_app
    from gateway.settings import GatewaySettings

    async def serve() -> None:
        settings = GatewaySettings(
            models={MODEL: {"workers": [worker]}},
            api_keys={API_KEY: TEAM},
            data_dir=data_dir,
            database_url=f"sqlite:///{data_dir}/ward.db",
            quota={"redis_url": URL, "key_prefix": prefix, "redis_timeout_s": 2.0, "config_file": quota_file},
        )
        app = build_app(settings)
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
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="ward-quota-gateways-"))
        self.quota_file = self.workdir / "quotas.yaml"
        self.quota_file.write_text(quota_yaml)
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
        for n in range(3):
            port, ready = free_port(), self.ctx.Event()
            data_dir = self.workdir / f"gateway-{n}"
            data_dir.mkdir()
            args = (self.worker.address, port, self.prefix, str(self.quota_file), str(data_dir), ready, self.stop)
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

    def audited_statuses(self) -> list[int]:
        """The HTTP status of every request record in the three gateways' audit logs."""
        from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
        from gateway.audit.service import create_audit_engine

        statuses = []
        for n in range(3):
            engine = create_audit_engine(f"sqlite:///{self.workdir / f'gateway-{n}' / 'ward.db'}")
            try:
                scope = ReadScope(teams=None, content=False, kinds=None)
                records = AuditReader(engine).iter_records(RecordFilter(kind="request"), scope, through_seq=10**12)
                statuses += [r["http_status"] for r in records]
            finally:
                engine.dispose()
        return statuses

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        for proc in self.procs:
            while proc.is_alive() and proc.exitcode is None:
                await asyncio.sleep(0.05)
                proc.join(timeout=0)
        await self.worker.stop()
        delete_prefix(URL, self.prefix)
        shutil.rmtree(self.workdir, ignore_errors=True)


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
    async def run() -> tuple[list[httpx2.Response], list[int]]:
        async with Gateways("defaults: {requests_per_minute: 40, tokens_per_minute: 1000000}", FakeConfig(model=MODEL)) as gw:
            responses = await hammer(gw.urls, clients_per_gateway=8, attempts=4, body={"model": MODEL, "messages": USER})
            return responses, gw.audited_statuses()

    responses, audited = asyncio.run(run())
    assert sorted(audited) == sorted(r.status_code for r in responses)  # each gateway audited what it answered
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
