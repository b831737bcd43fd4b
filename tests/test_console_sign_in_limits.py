"""What an unauthenticated caller can make the console keep: single sign-on starts are limited per
client address (429 in OpenAI's shape with Retry-After), and the sign-ins in flight are bounded in
both session stores (the oldest go first), so a flood from many addresses cannot grow the quota
store's Redis. The Redis tests use the real Redis with a key prefix of their own."""
from __future__ import annotations

import asyncio

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from quota_support import delete_prefix, redis_url, require_redis, unique_prefix
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.console.rate_limit import AddressRateLimit
from gateway.console.redis_sessions import RedisSessions
from gateway.console.router import MAX_REDIRECT_URI, build_console_router
from gateway.console.sessions import MemorySessions
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.anyio

REDIS_DB = 12  # the console's Redis tests


class Provider:
    """What OIDCLogin.start is given, without a provider to talk to: it keeps a login per start."""

    def __init__(self, store):
        self.store = store
        self.started = 0

    async def start(self, redirect_uri: str):
        self.started += 1
        state = f"state-{self.started}"
        await self.store.save_login(state, {"verifier": "v", "redirect_uri": redirect_uri, "nonce": "n"}, 600)
        return "https://idp.example/authorize?state=" + state, state


def console_app(console: dict, store) -> tuple[FastAPI, Provider]:
    settings = GatewaySettings(console=console)
    provider = Provider(store)
    app = FastAPI()
    app.include_router(build_console_router(settings.console, store, provider))
    return app, provider


def caller(app, address: str, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                             base_url="http://gateway", headers=headers)


@pytest.fixture
async def redis_store():
    """Two gateway replicas' stores on one Redis key prefix, with a small bound, and a raw client."""
    url = redis_url(REDIS_DB)
    require_redis(url)
    prefix = unique_prefix("console")
    clock = [1_800_000_000.0]  # microseconds since the epoch need 16 digits: none may be lost
    stores = [RedisSessions(url, ttl_s=100, idle_s=30, max_pending_sign_ins=5, key_prefix=prefix + ":",
                            clock=lambda: clock[0]) for _ in range(2)]
    raw = aioredis.from_url(url)
    try:
        yield stores, raw, prefix, clock
    finally:
        await raw.aclose()
        for store in stores:
            await store.shutdown()
        delete_prefix(url, prefix)


async def test_sso_starts_are_limited_per_client_address_with_a_429_and_retry_after():
    app, provider = console_app({"sign_in_starts_per_minute": 3}, MemorySessions(100, 30))
    async with caller(app, "203.0.113.7") as flooding, caller(app, "198.51.100.20") as other:
        answers = [await flooding.get("/console/oidc/start") for _ in range(4)]
        assert [a.status_code for a in answers] == [303, 303, 303, 429]
        refused = answers[-1]
        assert refused.json() == {"error": {"message": refused.json()["error"]["message"], "type": "requests",
                                            "param": None, "code": "rate_limit_exceeded"}}
        assert 1 <= int(refused.headers["retry-after"]) <= 20 and int(refused.headers["retry-after-ms"]) > 0
        assert "set-cookie" not in refused.headers
        assert provider.started == 3  # the refused start reached neither the provider nor the store
        assert (await other.get("/console/oidc/start")).status_code == 303  # another address is unaffected


async def test_an_ipv6_caller_is_limited_by_its_slash_64_not_by_each_address():
    app, _ = console_app({"sign_in_starts_per_minute": 2}, MemorySessions(100, 30))
    codes = []
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"):
        async with caller(app, host) as client:
            codes.append((await client.get("/console/oidc/start")).status_code)
    assert codes == [303, 303, 429, 303]


async def test_behind_a_trusted_proxy_the_forwarded_address_is_limited_and_a_forged_one_is_not_believed():
    """The address is the one the gateway records everywhere: uvicorn's, from X-Forwarded-For only when
    the peer is a proxy it trusts (FORWARDED_ALLOW_IPS)."""
    app, _ = console_app({"sign_in_starts_per_minute": 1}, MemorySessions(100, 30))
    behind = ProxyHeadersMiddleware(app, trusted_hosts="10.0.0.2")
    codes = []
    for forwarded in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):
        async with caller(behind, "10.0.0.2", **{"x-forwarded-for": forwarded}) as via_proxy:
            codes.append((await via_proxy.get("/console/oidc/start")).status_code)
    assert codes == [303, 303, 429]
    forged = []
    for forwarded in ("192.0.2.50", "192.0.2.51"):  # a direct caller cannot pick a fresh address per request
        async with caller(behind, "198.51.100.9", **{"x-forwarded-for": forwarded}) as direct:
            forged.append((await direct.get("/console/oidc/start")).status_code)
    assert forged == [303, 429]


def test_the_address_limit_refills_over_time_and_its_table_is_bounded():
    now = [0.0]
    limit = AddressRateLimit(per_minute=6, max_addresses=3, clock=lambda: now[0])
    assert [limit.acquire("a") for _ in range(7)] == [0.0] * 6 + [pytest.approx(10.0)]
    now[0] += 10
    assert limit.acquire("a") == 0.0 and limit.acquire("a") > 0
    for address in ("b", "c", "d"):
        assert limit.acquire(address) == 0.0
    assert len(limit) == 3  # "a", the least recently seen, went first


async def test_a_host_header_cannot_make_a_pending_sign_in_arbitrarily_large():
    """Without console.public_url the redirect URI comes from the request's Host: a huge one is refused
    before anything is kept, so every record in the store has a bounded size."""
    store = MemorySessions(100, 30)
    app, provider = console_app({}, store)
    async with caller(app, "203.0.113.8", host="h" * MAX_REDIRECT_URI + ".example") as client:
        answer = await client.get("/console/oidc/start")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_host"
    assert provider.started == 0


async def test_pending_sign_ins_in_memory_are_bounded_and_the_newest_kept():
    now = [0.0]
    store = MemorySessions(ttl_s=100, idle_s=100, max_sessions=10, max_pending_sign_ins=3, clock=lambda: now[0])
    session = await store.create("credential", "subject", "team", "api_key")
    for i in range(5):
        await store.save_login(f"s{i}", {"verifier": str(i)}, ttl_s=60)
    assert await store.pending_sign_ins() == 3
    assert await store.take_login("s0") is None and await store.take_login("s1") is None
    assert await store.take_login("s4") == {"verifier": "4"}
    now[0] += 61
    assert await store.take_login("s3") is None  # expired
    await store.save_login("fresh", {"verifier": "f"}, ttl_s=60)
    assert await store.pending_sign_ins() == 1  # the expired ones were dropped
    assert await store.get(session.id) is session  # logins never push out signed-in sessions


async def test_pending_sign_ins_in_redis_are_bounded_expire_and_are_taken_once(redis_store):
    (one, other), raw, prefix, clock = redis_store
    for i in range(8):
        await one.save_login(f"s{i}", {"verifier": str(i)}, ttl_s=60)
    assert await other.pending_sign_ins() == 5
    assert await other.take_login("s2") is None  # the oldest went first, as in memory
    assert await other.take_login("s7") == {"verifier": "7"} and await one.take_login("s7") is None
    keys = sorted(k.decode() for k in await raw.keys(prefix + ":*"))
    assert len(keys) == 2 and all(0 < ttl <= 60_000 for ttl in [await raw.pttl(k) for k in keys])  # Redis expires them
    assert b"s3" not in await raw.hkeys(prefix + ":login")  # states are kept as digests
    clock[0] += 61
    assert await other.take_login("s6") is None  # expired
    await one.save_login("fresh", {"verifier": "f"}, ttl_s=60)
    assert await one.pending_sign_ins() == 1 and await other.take_login("fresh") == {"verifier": "f"}


async def test_a_flood_from_two_replicas_cannot_grow_redis_past_the_bound_and_a_real_sign_in_still_works(redis_store):
    from gateway.auth.settings import OIDCSettings
    from gateway.console.oidc_login import OIDCLogin

    (one, other), raw, prefix, _ = redis_store
    big = {"verifier": "v" * 86, "redirect_uri": "https://" + "h" * MAX_REDIRECT_URI, "nonce": "n" * 32}
    for wave in range(5):  # concurrent starts on both replicas, within each client's connection pool
        await asyncio.gather(*(store.save_login(f"flood-{wave}-{i}-{n}", big, 600)
                               for n, store in enumerate((one, other)) for i in range(40)))
    assert await one.pending_sign_ins() == 5
    hash_key, zset_key = [prefix + ":login", prefix + ":login:by_expiry"]
    assert await raw.hlen(hash_key) == 5 and await raw.zcard(zset_key) == 5
    used = sum([await raw.memory_usage(k) for k in (hash_key, zset_key)])
    assert used < 5 * 2048  # about 1 KB a sign-in with the longest redirect URI, whatever the flood

    login = OIDCLogin(OIDCSettings(issuer="http://127.0.0.1:9", audience=["ward"], client_id="console"), one)
    login._metadata = {"authorization_endpoint": "http://127.0.0.1:9/authorize",
                       "token_endpoint": "http://127.0.0.1:9/token"}  # discovery done
    url, state = await login.start("http://gateway/console/oidc/callback")
    pending = await other.take_login(state)  # the callback may reach another replica
    assert pending is not None and pending["verifier"] and pending["nonce"] and "state=" + state in url
    assert await one.take_login(state) is None


async def test_the_limits_are_console_settings_and_reach_both_stores(monkeypatch):
    from gateway.console.factory import build_console

    settings = GatewaySettings(console={"max_pending_sign_ins": 7, "sign_in_starts_per_minute": 4})
    console = build_console(settings)
    assert console.sessions.max_pending_sign_ins == 7
    monkeypatch.setenv("WARD_CONSOLE__MAX_PENDING_SIGN_INS", "9")
    with_redis = build_console(GatewaySettings(quota={"redis_url": redis_url(REDIS_DB)}))
    try:
        assert isinstance(with_redis.sessions, RedisSessions) and with_redis.sessions.max_pending_sign_ins == 9
    finally:
        await with_redis.sessions.shutdown()
    for bad in ({"max_pending_sign_ins": 0}, {"sign_in_starts_per_minute": 0}):
        with pytest.raises(ValueError):
            GatewaySettings(console=bad)
