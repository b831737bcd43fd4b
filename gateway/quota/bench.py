"""Latency the quota layer adds to each request: admit (before dispatch) and admit + settle, with quotas
off, on the in-process store and on Redis; p50 and p99 in milliseconds.

Run: ``python -m gateway.quota.bench --redis-url redis://127.0.0.1:6379/0`` (the keys it writes, under a
fresh prefix, are deleted afterwards). Every limit kind is set on the team, the key and the model, high
enough never to refuse, so each request runs the full check-and-record path over three scopes.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import QuotaSettings

_HIGH = "{requests_per_minute: 100000000, tokens_per_minute: 1000000000000, max_concurrent: 1000000, tokens_per_day: 1000000000000, tokens_per_month: 1000000000000}"
BENCH_CONFIG = f"""
teams:
  bench:
    limits: {_HIGH}
    keys: {{bench-key: {_HIGH}}}
    models: {{bench-model: {_HIGH}}}
"""


@dataclass
class Row:
    mode: str
    requests: int
    concurrency: int
    admit_p50_ms: float
    admit_p99_ms: float
    total_p50_ms: float
    total_p99_ms: float


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def _measure(quotas: QuotaService | None, requests: int, concurrency: int) -> tuple[list[float], list[float]]:
    admit_ms: list[float] = []
    total_ms: list[float] = []
    per_client = max(1, requests // concurrency)

    async def client() -> None:
        for _ in range(per_client):
            t0 = time.perf_counter()
            if quotas is not None:
                admission = await quotas.admit("bench", key_id="bench-key", model="bench-model", reserve_tokens=1100)
            t1 = time.perf_counter()
            if quotas is not None:
                await quotas.settle(admission, prompt_tokens=100, completion_tokens=200)
            t2 = time.perf_counter()
            admit_ms.append((t1 - t0) * 1000)
            total_ms.append((t2 - t0) * 1000)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return admit_ms, total_ms


async def _run_mode(mode: str, redis_url: str | None, requests: int, concurrency: int, warmup: int) -> Row:
    prefix = f"ward:quota:bench-{uuid.uuid4().hex[:8]}"
    quotas: QuotaService | None = None
    config = StaticQuotaConfig(parse_quota_config(BENCH_CONFIG))
    if mode == "in-process":
        quotas = QuotaService(InMemoryQuotaStore(), config, QuotaSettings(redis_url=None))
    elif mode == "redis":
        settings = QuotaSettings(redis_url=redis_url, key_prefix=prefix)
        quotas = QuotaService(RedisQuotaStore.from_url(redis_url, key_prefix=prefix, timeout_s=2.0), config, settings)
    try:
        if quotas is not None:
            await quotas.start()
        await _measure(quotas, warmup, concurrency)
        admit_ms, total_ms = await _measure(quotas, requests, concurrency)
    finally:
        if quotas is not None:
            await quotas.aclose()
        if mode == "redis":
            _delete_prefix(redis_url, prefix)
    return Row(
        mode, len(total_ms), concurrency,
        round(statistics.median(admit_ms), 4), round(_percentile(admit_ms, 99), 4),
        round(statistics.median(total_ms), 4), round(_percentile(total_ms, 99), 4),
    )


def _delete_prefix(url: str | None, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=None, help="Redis to measure against (default: $WARD_REDIS_URL; none: skip the Redis row)")
    parser.add_argument("--requests", type=int, default=5000, help="measured requests per mode")
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured requests first")
    parser.add_argument("--concurrency", type=int, default=1, help="concurrent clients in this process")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")


def run(args: argparse.Namespace) -> int:
    redis_url = args.redis_url or QuotaSettings().redis_url
    modes = ["off", "in-process"] + (["redis"] if redis_url else [])
    rows = [asyncio.run(_run_mode(m, redis_url, args.requests, args.concurrency, args.warmup)) for m in modes]
    print(f"quota layer latency per request, {args.requests} requests, concurrency {args.concurrency} (ms)")
    print(f"{'mode':<12}{'admit p50':>12}{'admit p99':>12}{'+settle p50':>13}{'+settle p99':>13}")
    for r in rows:
        print(f"{r.mode:<12}{r.admit_p50_ms:>12.3f}{r.admit_p99_ms:>12.3f}{r.total_p50_ms:>13.3f}{r.total_p99_ms:>13.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.quota.bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
