"""Acceptance: three gateway processes sharing one Redis (DB 2), hammered concurrently, never admit more
than the limits allow, exactly; and the in-process store holds the same under the same load.

Each process runs its own QuotaService on its own RedisQuotaStore. Peaks are measured by the test itself
in a way that can under-report but never over-report: a shared counter is raised only after admit
returns and lowered before settle is called, so it never exceeds what the quota layer holds."""
from __future__ import annotations

import asyncio
import datetime as dt
import multiprocessing as mp
import random
import time
from dataclasses import dataclass, field

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
from gateway.quota.errors import QuotaExceeded
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import QuotaSettings
from quota_support import delete_prefix, redis_url, require_redis, unique_prefix

URL = redis_url(2)
PROCESSES = 3
TASKS_PER_PROCESS = 24


@dataclass(frozen=True)
class Scenario:
    yaml: str
    reserve: int = 0
    hold_s: tuple[float, float] = (0.0, 0.0)  # how long an admitted request "runs"
    attempts_per_task: int = 40
    outcome: str = "full"  # "full": uses what it reserved; "mixed": some use less, some are cancelled or fail
    model: str | None = None
    key_id: str | None = None
    fill_up: bool = False  # afterwards, admit one request at a time until refused (needs a limit that fills)


@dataclass
class Tally:
    admitted: int = 0
    refused: int = 0
    released: int = 0
    settled_requests: int = 0
    prompt: int = 0
    completion: int = 0
    refusal_kinds: set = field(default_factory=set)

    def merge(self, other: "Tally") -> None:
        for name in ("admitted", "refused", "released", "settled_requests", "prompt", "completion"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.refusal_kinds |= other.refusal_kinds


class RedisTracker:
    """Shared counters in Redis for what is admitted and not yet settled (requests and tokens)."""

    def __init__(self, client: aioredis.Redis, prefix: str):
        self.client, self.prefix = client, prefix

    async def up(self, name: str, amount: int) -> None:
        value = await self.client.incrby(f"{self.prefix}:track:{name}", amount)
        await self.client.eval(
            "local p = tonumber(redis.call('GET', KEYS[1]) or '0') if tonumber(ARGV[1]) > p then redis.call('SET', KEYS[1], ARGV[1]) end",
            1, f"{self.prefix}:track:{name}:peak", value,
        )

    async def down(self, name: str, amount: int) -> None:
        await self.client.decrby(f"{self.prefix}:track:{name}", amount)


class LocalTracker:
    def __init__(self) -> None:
        self.value: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    async def up(self, name: str, amount: int) -> None:
        self.value[name] = self.value.get(name, 0) + amount
        self.peak[name] = max(self.peak.get(name, 0), self.value[name])

    async def down(self, name: str, amount: int) -> None:
        self.value[name] -= amount


async def hammer(quotas: QuotaService, scenario: Scenario, tracker, seed: int) -> Tally:
    """TASKS_PER_PROCESS concurrent clients; each tries attempts_per_task requests, back to back."""
    rng = random.Random(seed)
    tally = Tally()

    async def client() -> None:
        for _ in range(scenario.attempts_per_task):
            try:
                admission = await quotas.admit(
                    "ed", key_id=scenario.key_id, model=scenario.model, reserve_tokens=scenario.reserve
                )
            except QuotaExceeded as exc:
                tally.refused += 1
                tally.refusal_kinds.add(exc.limit_kind.value)
                if exc.limit_kind.is_budget and (exc.retry_after_s or 0) > 60:
                    return  # spent for the day: nothing more can get in
                await asyncio.sleep(0.0005 if exc.limit_kind.value == "max_concurrent" else 0)
                continue
            tally.admitted += 1
            await tracker.up("requests", 1)
            await tracker.up("tokens", scenario.reserve)
            low, high = scenario.hold_s
            if high:
                await asyncio.sleep(rng.uniform(low, high))
            fate = "full" if scenario.outcome == "full" else rng.choice(["full", "less", "cancelled", "failed"])
            if fate == "failed":  # never reached a worker: everything goes back, nothing is recorded
                await tracker.down("tokens", scenario.reserve)
                await tracker.down("requests", 1)
                await quotas.release(admission)
                tally.released += 1
                continue
            prompt = scenario.reserve // 5
            completion = {"full": scenario.reserve - prompt, "less": rng.randint(0, scenario.reserve - prompt), "cancelled": 0}[fate]
            await tracker.down("tokens", scenario.reserve - prompt - completion)
            await tracker.down("requests", 1)
            await quotas.settle(admission, prompt_tokens=prompt, completion_tokens=completion)
            tally.settled_requests += 1
            tally.prompt += prompt
            tally.completion += completion

    await asyncio.gather(*(client() for _ in range(TASKS_PER_PROCESS)))
    return tally


def _gateway_process(prefix: str, scenario: Scenario, seed: int, start, results) -> None:
    """One gateway process: its own service, store and Redis connections."""

    async def run() -> Tally:
        settings = QuotaSettings(redis_url=URL, key_prefix=prefix, redis_timeout_s=2.0)
        store = RedisQuotaStore.from_url(URL, key_prefix=prefix, timeout_s=2.0)
        quotas = QuotaService(store, StaticQuotaConfig(parse_quota_config(scenario.yaml)), settings)
        tracker_client = aioredis.Redis.from_url(URL)
        await quotas.start()
        start.wait()
        try:
            return await hammer(quotas, scenario, RedisTracker(tracker_client, prefix), seed)
        finally:
            await tracker_client.aclose()
            await quotas.aclose()

    try:
        results.put(("ok", asyncio.run(run())))
    except BaseException as exc:  # report, so the parent fails with the reason instead of hanging
        results.put(("error", repr(exc)))


@dataclass
class Outcome:
    tally: Tally
    peak_requests: int
    peak_tokens: int
    usage: list
    fill_used: int  # tokens of the requests that got in one by one after the load (see fill_up)


async def fill_up(quotas: QuotaService, scenario: Scenario) -> int:
    """After the load: admit full-size requests one at a time until refused; returns the tokens they used."""
    used = 0
    while True:
        try:
            admission = await quotas.admit("ed", key_id=scenario.key_id, model=scenario.model, reserve_tokens=scenario.reserve)
        except QuotaExceeded:
            return used
        prompt = scenario.reserve // 5
        await quotas.settle(admission, prompt_tokens=prompt, completion_tokens=scenario.reserve - prompt)
        used += scenario.reserve


def run_three_gateways(scenario: Scenario) -> Outcome:
    require_redis(URL)
    prefix = unique_prefix("mp")
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_gateway_process, args=(prefix, scenario, seed, start, results)) for seed in range(PROCESSES)]
    try:
        for p in procs:
            p.start()
        time.sleep(0.2)
        start.set()
        tally = Tally()
        for _ in procs:
            status, value = results.get(timeout=120)
            assert status == "ok", value
            tally.merge(value)
        for p in procs:
            p.join(timeout=30)
        client = sync_redis.Redis.from_url(URL)
        peaks = [int(client.get(f"{prefix}:track:{n}:peak") or 0) for n in ("requests", "tokens")]
        client.close()
        fill_used = asyncio.run(_fill_up_redis(prefix, scenario)) if scenario.fill_up else 0
        usage = asyncio.run(_usage(prefix))
        return Outcome(tally, peaks[0], peaks[1], usage, fill_used)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        delete_prefix(URL, prefix)


async def _fill_up_redis(prefix: str, scenario: Scenario) -> int:
    settings = QuotaSettings(redis_url=URL, key_prefix=prefix, redis_timeout_s=2.0)
    store = RedisQuotaStore.from_url(URL, key_prefix=prefix, timeout_s=2.0)
    quotas = QuotaService(store, StaticQuotaConfig(parse_quota_config(scenario.yaml)), settings)
    try:
        return await fill_up(quotas, scenario)
    finally:
        await quotas.aclose()


async def _usage(prefix: str) -> list:
    store = RedisQuotaStore.from_url(URL, key_prefix=prefix)
    try:
        today = dt.datetime.now(dt.timezone.utc).date()
        # A run that crosses midnight UTC spreads over two days.
        return await store.usage("ed", today - dt.timedelta(days=1), today)
    finally:
        await store.aclose()


def run_one_gateway_in_process(scenario: Scenario) -> Outcome:
    """The embedded default: one gateway, the in-process store, the same total load."""

    async def run() -> Outcome:
        quotas = QuotaService(InMemoryQuotaStore(), StaticQuotaConfig(parse_quota_config(scenario.yaml)), QuotaSettings(redis_url=None))
        tracker = LocalTracker()
        tallies = await asyncio.gather(*(hammer(quotas, scenario, tracker, seed) for seed in range(PROCESSES)))
        tally = Tally()
        for t in tallies:
            tally.merge(t)
        fill_used = await fill_up(quotas, scenario) if scenario.fill_up else 0
        today = dt.datetime.now(dt.timezone.utc).date()
        usage = await quotas._store.usage("ed", today - dt.timedelta(days=1), today)
        await quotas.aclose()
        return Outcome(tally, tracker.peak.get("requests", 0), tracker.peak.get("tokens", 0), usage, fill_used)

    return asyncio.run(run())


RUNNERS = {"redis-3-processes": run_three_gateways, "in-process": run_one_gateway_in_process}


@pytest.fixture(params=list(RUNNERS))
def run(request):
    return RUNNERS[request.param]


def test_requests_per_minute_admits_exactly_the_limit(run):
    out = run(Scenario("defaults: {requests_per_minute: 50}"))
    assert out.tally.admitted == 50
    assert out.tally.refused == PROCESSES * TASKS_PER_PROCESS * 40 - 50
    assert out.tally.refusal_kinds == {"requests_per_minute"}


def test_no_more_than_max_concurrent_run_at_once(run):
    out = run(Scenario("defaults: {max_concurrent: 4}", hold_s=(0.002, 0.01), attempts_per_task=6))
    assert out.peak_requests <= 4
    assert out.peak_requests == 4, "the load never reached the limit: the test proves nothing"
    assert out.tally.refusal_kinds == {"max_concurrent"}


def test_tokens_per_minute_with_reserve_then_settle_never_overshoots_and_returns_what_is_unused(run):
    scenario = Scenario(
        "defaults: {tokens_per_minute: 20000}", reserve=1000, hold_s=(0.001, 0.01), attempts_per_task=8, outcome="mixed",
        model="llama", fill_up=True,
    )
    out = run(scenario)
    tally = out.tally
    used = tally.prompt + tally.completion
    # Everything happened inside one 60 s window: what is counted is exactly what was used.
    assert out.peak_tokens <= 20000
    assert used <= 20000
    # Cancelled, shorter and failed requests gave back their reservations: far more than 20 got in.
    assert tally.admitted > 20 and tally.released > 0
    # Exact, not approximate: requests taken one by one afterwards fill the window to the last
    # reservation that fits, and no further.
    total = used + out.fill_used
    assert total <= 20000 < total + 1000
    assert [(u.model, u.requests, u.prompt_tokens + u.completion_tokens) for u in out.usage] == [
        ("llama", tally.settled_requests + out.fill_used // 1000, total)
    ]


def test_a_day_budget_across_scopes_is_exact(run):
    yaml = """
defaults: {tokens_per_day: 30000}
teams:
  ed:
    keys: {k1: {max_concurrent: 5}}
    models: {llama: {requests_per_minute: 1000}}
"""
    out = run(Scenario(yaml, reserve=500, hold_s=(0.0, 0.002), attempts_per_task=50, key_id="k1", model="llama"))
    used = out.tally.prompt + out.tally.completion
    assert out.tally.admitted == 60 and used == 30000  # 500 each, exactly the budget
    assert out.peak_requests <= 5
    assert "tokens_per_day" in out.tally.refusal_kinds
    assert sum(u.requests for u in out.usage) == 60
