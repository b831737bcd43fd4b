"""The latency quotas add to each gateway request, with quotas off, on the in-process store and on
Redis: p50 and p99 in milliseconds, and the difference to "off".

Two measurements per mode:
- ``gateway``: POST /v1/chat/completions through the real gateway app (in-process ASGI, no sockets)
  in front of an instant in-process worker, with or without QuotaHooks;
- ``layer``: QuotaService.admit + settle alone.

Every limit kind is set on the team, the key and the model, high enough never to refuse, so each
request runs the full check-and-record path over three scopes. Run::

    python -m ward.benchmarks.quota --redis-url redis://127.0.0.1:6379/0 [--requests N] [--json out.json]

The Redis keys it writes, under a fresh prefix, are deleted afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import QuotaSettings

MODEL = "bench-model"
API_KEY = "sk-quota-bench-key"
TEAM = "bench"
_HIGH = (
    "{requests_per_minute: 100000000, tokens_per_minute: 1000000000000, max_concurrent: 1000000,"
    " tokens_per_day: 1000000000000, tokens_per_month: 1000000000000}"
)


def bench_config(key_id: str) -> str:
    return f"teams:\n  {TEAM}:\n    limits: {_HIGH}\n    keys: {{'{key_id}': {_HIGH}}}\n    models: {{{MODEL}: {_HIGH}}}\n"


@dataclass
class Row:
    path: str  # "gateway" or "layer"
    mode: str  # "off", "in-process" or "redis"
    requests: int
    p50_ms: float
    p99_ms: float
    added_p50_ms: float  # over "off" on the same path
    added_p99_ms: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _service(mode: str, redis_url: str | None, prefix: str, key_id: str) -> QuotaService | None:
    config = StaticQuotaConfig(parse_quota_config(bench_config(key_id)))
    if mode == "in-process":
        return QuotaService(InMemoryQuotaStore(), config, QuotaSettings(redis_url=None))
    if mode == "redis":
        store = RedisQuotaStore.from_url(redis_url, key_prefix=prefix, timeout_s=2.0)
        return QuotaService(store, config, QuotaSettings(redis_url=redis_url, key_prefix=prefix))
    return None


class _InstantStream:
    """One token, then usage: a worker that costs nothing."""

    def __init__(self, pb, prompt_tokens: int) -> None:
        delta = pb.ChoiceDelta(index=0, token_ids=[1], text="ok", finish_reason="stop", stop_token_id=-1)
        usage = pb.Usage(prompt_tokens=prompt_tokens, completion_tokens=1)
        self._messages = iter([
            pb.GenerateResponse(choices=[delta], prompt_tokens=prompt_tokens),
            pb.GenerateResponse(prompt_tokens=prompt_tokens, usage=usage),
        ])

    def __aiter__(self) -> AsyncIterator:
        return self

    async def __anext__(self):
        try:
            return next(self._messages)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        return None

    def abort_lost(self) -> None:
        return None


class InstantWorker:
    """An in-process WorkerClient (gateway.workers.client) that answers at once."""

    def __init__(self, address: str) -> None:
        from proto.ward.worker.v1 import worker_pb2 as pb

        self.address = address
        self.pb = pb

    def generate(self, request):
        return _InstantStream(self.pb, 8)

    async def embed(self, request, timeout=None):
        raise NotImplementedError

    async def tokenize(self, request, timeout=None):
        return self.pb.TokenizeResponse(count=8, max_model_len=4096)

    async def model_info(self, timeout=None):
        return self.pb.ModelInfoResponse(
            served_model_name=MODEL, max_model_len=4096, has_chat_template=True, task="generate",
            vocab_size=32000, worker_id="instant-0", contract_version="ward.worker.v1",
        )

    async def health(self, timeout=None):
        return self.pb.HealthResponse(live=True, ready=True, detail="ready")

    async def load_stats(self, timeout=None):
        return self.pb.LoadStatsResponse()

    async def close(self) -> None:
        return None


async def _gateway_latencies(quotas: QuotaService | None, requests: int, warmup: int) -> list[float]:
    import httpx2

    from gateway.app import create_app
    from gateway.quota.hooks import QuotaHooks, quota_error_converters
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(models={MODEL: {"workers": ["instant:0"]}}, api_keys={API_KEY: TEAM})
    extra = {} if quotas is None else {"hooks": QuotaHooks(quotas), "error_converters": quota_error_converters()}
    app = create_app(settings, connect=InstantWorker, **extra)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
    async with app.router.lifespan_context(app):
        await app.state.ward.pool.wait_until_ready(10.0, every_worker=True)
        transport = httpx2.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway", headers=headers) as http:
            latencies = []
            for i in range(warmup + requests):
                t0 = time.perf_counter()
                response = await http.post("/v1/chat/completions", json=body)
                elapsed = (time.perf_counter() - t0) * 1000
                if response.status_code != 200:
                    raise RuntimeError(f"benchmark request failed: {response.status_code} {response.text}")
                if i >= warmup:
                    latencies.append(elapsed)
    return latencies


async def _layer_latencies(quotas: QuotaService | None, requests: int, warmup: int, key_id: str) -> list[float]:
    if quotas is not None:
        await quotas.start()
    latencies = []
    for i in range(warmup + requests):
        t0 = time.perf_counter()
        if quotas is not None:
            admission = await quotas.admit(TEAM, key_id=key_id, model=MODEL, reserve_tokens=24)
            await quotas.settle(admission, prompt_tokens=8, completion_tokens=1)
        if i >= warmup:
            latencies.append((time.perf_counter() - t0) * 1000)
    if quotas is not None:
        await quotas.aclose()
    return latencies


async def _run(path: str, mode: str, redis_url: str | None, requests: int, warmup: int) -> list[float]:
    prefix = f"ward:quota:bench-{uuid.uuid4().hex[:8]}"
    key_id = _static_key_id(API_KEY)
    quotas = _service(mode, redis_url, prefix, key_id)
    try:
        if path == "gateway":
            return await _gateway_latencies(quotas, requests, warmup)
        return await _layer_latencies(quotas, requests, warmup, key_id)
    finally:
        if mode == "redis":
            _delete_prefix(redis_url, prefix)


def _static_key_id(key: str) -> str:
    """The key id the gateway's static authenticator gives an API key (so the key scope is in play)."""
    import hashlib

    return "static:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def _delete_prefix(url: str | None, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def measure(redis_url: str | None, requests: int, warmup: int, paths: list[str]) -> list[Row]:
    modes = ["off", "in-process"] + (["redis"] if redis_url else [])
    rows = []
    for path in paths:
        base: tuple[float, float] | None = None
        for mode in modes:
            ms = asyncio.run(_run(path, mode, redis_url, requests, warmup))
            p50, p99 = statistics.median(ms), _percentile(ms, 99)
            if base is None:
                base = (p50, p99)
            rows.append(Row(path, mode, len(ms), round(p50, 4), round(p99, 4), round(p50 - base[0], 4), round(p99 - base[1], 4)))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=None, help="Redis to measure (default: $WARD_REDIS_URL; none: no Redis rows)")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per mode")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument("--path", choices=["gateway", "layer", "both"], default="both")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")


def run(args: argparse.Namespace) -> int:
    redis_url = args.redis_url or QuotaSettings().redis_url
    paths = ["gateway", "layer"] if args.path == "both" else [args.path]
    rows = measure(redis_url, args.requests, args.warmup, paths)
    print(f"latency per request, one client, {args.requests} requests per row (ms)")
    print(f"{'path':<9}{'quotas':<12}{'p50':>9}{'p99':>9}{'added p50':>11}{'added p99':>11}")
    for r in rows:
        print(f"{r.path:<9}{r.mode:<12}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{r.added_p50_ms:>11.3f}{r.added_p99_ms:>11.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ward.benchmarks.quota", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
