"""The web console's server side, without a browser: the served app (``gateway.cli.build_app``) in this
event loop with an in-process fake worker, on SQLite.

Sessions, cookie flags, CSRF, the Content-Security-Policy, role refusals through a console session,
the audit records of sign-in, sign-out and changes, usage over time and the log's verification.
"""
from __future__ import annotations

import json
import re

import httpx
import pytest
from governance_support import (
    ADMIN_KEY,
    CHAT_MODEL,
    admin_entries,
    audit_records,
    bearer,
    chat,
    database,
    fake_workers,
    governed_gateway,
    make_team,
    unique_team,
)

from gateway.console.middleware import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    with database("sqlite", tmp_path_factory.mktemp("console-db")) as url:
        yield url, tmp_path_factory.mktemp("console-data")


@pytest.fixture
async def gw(db):
    async with fake_workers() as workers, governed_gateway(*db, workers) as gateway:
        yield gateway


def browser(gw, base_url: str = "http://gateway") -> httpx.AsyncClient:
    """A client that behaves like the console's page: same-origin fetches, its own cookie jar."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app), base_url=base_url, timeout=10,
                             headers={"sec-fetch-site": "same-origin", "origin": base_url})


async def sign_in(client: httpx.AsyncClient, key: str) -> dict:
    response = await client.post("/console/session", json={"api_key": key})
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_page_and_its_assets_carry_a_strict_policy_and_no_inline_script(gw):
    for path in ("/console", "/console/static/console.js", "/console/static/console.css", "/console/session"):
        response = await gw.client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
    policy = CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy and "default-src 'none'" in policy
    page = (await gw.client.get("/console")).text
    assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []  # every script is a file of the gateway
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere
    assert (await gw.client.get("/console/static/other.js")).status_code == 404


async def test_key_sign_in_sets_a_strict_http_only_short_lived_cookie(gw):
    async with browser(gw) as client:
        response = await client.post("/console/session", json={"api_key": ADMIN_KEY})
        assert response.status_code == 200
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("ward_console=")
        flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "samesite", "path", "max-age"} <= flags and "secure" not in flags
        assert "samesite=strict" in cookie.lower() and "max-age=1800" in cookie.lower()
        session = response.json()
        assert session["signed_in"] and "platform_admin" in session["roles"] and session["csrf_token"]
        assert ADMIN_KEY not in response.text  # the credential stays in the gateway
    async with browser(gw, "https://gateway") as client:
        response = await client.post("/console/session", json={"api_key": ADMIN_KEY})
        assert "secure" in response.headers["set-cookie"].lower()


async def test_a_change_needs_the_session_csrf_token_and_the_same_site(gw):
    team = unique_team("csrf")
    async with browser(gw) as client:
        token = (await sign_in(client, ADMIN_KEY))["csrf_token"]
        assert (await client.get("/admin/teams")).status_code == 200  # reads need no token
        missing = await client.post("/admin/teams", json={"name": team})
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_failed"
        wrong = await client.post("/admin/teams", json={"name": team}, headers={"x-csrf-token": "x" + token})
        assert wrong.status_code == 403
        cross = await client.post("/admin/teams", json={"name": team},
                                  headers={"x-csrf-token": token, "sec-fetch-site": "cross-site"})
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "csrf_failed"
        other_origin = await client.post("/admin/teams", json={"name": team},
                                         headers={"x-csrf-token": token, "origin": "https://evil.example"})
        assert other_origin.status_code == 403
        assert (await gw.client.get("/admin/teams", headers=bearer(ADMIN_KEY))).json()["data"]
        assert team not in {t["name"] for t in (await client.get("/admin/teams")).json()["data"]}
        made = await client.post("/admin/teams", json={"name": team}, headers={"x-csrf-token": token})
        assert made.status_code == 201, made.text
        signout = await client.post("/console/sign-out")
        assert signout.status_code == 403  # signing out is a change too
    async with browser(gw) as client:
        cross_sign_in = await client.post("/console/session", json={"api_key": ADMIN_KEY},
                                          headers={"sec-fetch-site": "cross-site"})
        assert cross_sign_in.status_code == 403


async def test_a_session_has_exactly_the_rights_of_its_credential(gw):
    team = unique_team("roles")
    keys = make_team(gw.url, team, "user", "team_admin")
    auditor = make_team(gw.url, unique_team("oversight"), "auditor")["auditor"]
    async with browser(gw) as client:
        user = await sign_in(client, keys["user"])
        assert user["roles"] == ["user"]
        assert (await client.get("/admin/teams")).status_code == 403
        assert (await client.get("/audit/records")).status_code == 403
    async with browser(gw) as client:
        token = (await sign_in(client, keys["team_admin"]))["csrf_token"]
        own = await client.get("/admin/teams")
        assert [t["name"] for t in own.json()["data"]] == [team]
        refused = await client.put(f"/admin/teams/{team}/quotas", json={"requests_per_minute": 5},
                                   headers={"x-csrf-token": token})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
        assert (await client.get("/admin/usage/series", params={"team": "platform"})).status_code == 403
        assert (await client.post("/audit/verification", headers={"x-csrf-token": token})).status_code == 403
    async with browser(gw) as client:
        token = (await sign_in(client, auditor))["csrf_token"]
        assert (await client.get("/audit/records")).status_code == 200
        assert (await client.get("/admin/teams")).status_code == 403
        created = await client.post("/admin/teams", json={"name": unique_team()}, headers={"x-csrf-token": token})
        assert created.status_code == 403 and created.json()["error"]["code"] == "permission_denied"


async def test_sign_in_sign_out_and_changes_are_in_the_audit_log(gw):
    team = unique_team("audited")
    async with browser(gw) as client:
        refused = await client.post("/console/session", json={"api_key": "ward-0123456789abcdef." + "q" * 43})
        assert refused.status_code == 401
        token = (await sign_in(client, ADMIN_KEY))["csrf_token"]
        assert (await client.post("/admin/teams", json={"name": team}, headers={"x-csrf-token": token})).status_code == 201
        assert (await client.get("/admin/teams")).status_code == 200  # an admin read through the console
        assert (await client.post("/console/sign-out", headers={"x-csrf-token": token})).status_code == 200
        after = await client.get("/admin/teams")
        assert after.status_code == 401  # the cookie is dead (and deleted)
        assert (await client.get("/console/session")).json()["signed_in"] is False
    actions = [e["data"]["action"] for e in admin_entries(gw.url) if e["data"]["action"].startswith("console.")]
    assert actions[-3:] == ["console.sign_in_refused", "console.sign_in", "console.sign_out"]
    created = admin_entries(gw.url, team=team, action="team.create")
    assert created and created[0]["data"]["actor"]["auth_method"] == "api_key"
    reads = [r for r in audit_records(gw.url, kind="access") if r["data"]["action"] == "admin.read"]
    assert reads  # the console's reads are recorded like any admin read


async def test_a_revoked_key_ends_its_console_session(gw):
    team = unique_team("revoke")
    key = make_team(gw.url, team, "team_admin")["team_admin"]
    async with browser(gw) as client:
        await sign_in(client, key)
        assert (await client.get("/admin/teams")).status_code == 200
        key_id = (await gw.client.get(f"/admin/teams/{team}/keys", headers=bearer(ADMIN_KEY))).json()["data"][0]["id"]
        assert (await gw.client.delete(f"/admin/keys/{key_id}", headers=bearer(ADMIN_KEY))).status_code == 200
        assert (await client.get("/admin/teams")).status_code == 401
        assert (await client.get("/console/session")).json()["signed_in"] is False


async def test_usage_over_time_counts_requests_tokens_and_refusals_per_team_and_model(gw):
    team = unique_team("usage")
    keys = make_team(gw.url, team, "user", "team_admin")
    for _ in range(2):
        assert (await gw.client.post("/v1/chat/completions", json=chat(), headers=bearer(keys["user"]))).status_code == 200
    refused = await gw.client.post("/v1/chat/completions", json=chat(model="no-such-model"), headers=bearer(keys["user"]))
    assert refused.status_code in (400, 403, 404)
    async with browser(gw) as client:
        await sign_in(client, keys["team_admin"])
        series = (await client.get("/admin/usage/series", params={"bucket": "hour"})).json()
    rows = [r for r in series["data"] if r["team"] == team]
    assert {r["team"] for r in series["data"]} == {team}  # a team admin sees its own team only
    served = [r for r in rows if r["model"] == CHAT_MODEL]
    assert sum(r["requests"] for r in served) == 2
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in served) > 0
    assert all(r["latency_ms_p50"] is not None for r in served)
    assert sum(r["requests"] for r in rows) == 3
    everyone = (await gw.client.get("/admin/usage/series", headers=bearer(ADMIN_KEY))).json()
    assert team in {r["team"] for r in everyone["data"]}


async def test_an_auditor_verifies_the_log_and_the_run_is_recorded(gw):
    auditor = make_team(gw.url, unique_team("verify"), "auditor")["auditor"]
    async with browser(gw) as client:
        token = (await sign_in(client, auditor))["csrf_token"]
        assert (await client.get("/audit/verification")).json()["last"] is None
        report = (await client.post("/audit/verification", headers={"x-csrf-token": token})).json()
        assert report["ok"] is True and report["entries"] > 0 and report["first_problem"] is None
        assert (await client.get("/audit/verification")).json()["last"]["finished_at"] == report["finished_at"]
    actions = {r["data"]["action"] for r in audit_records(gw.url, kind="access")}
    assert {"verification.read", "verification.run"} <= actions
    assert (await gw.client.post("/audit/verification", headers=bearer(ADMIN_KEY))).status_code == 403


async def test_without_an_identity_provider_the_sso_sign_in_is_not_offered(gw):
    assert (await gw.client.get("/console/session")).json() == {"signed_in": False, "oidc": False}
    assert (await gw.client.get("/console/oidc/start")).status_code == 404


async def test_auditors_search_the_stored_text_and_admins_cannot(gw):
    team = unique_team("text")
    keys = make_team(gw.url, team, "user")
    auditor = make_team(gw.url, unique_team("reader"), "auditor")["auditor"]
    marker = "bed fourteen handover"
    assert (await gw.client.post("/v1/chat/completions", json=chat(content=marker), headers=bearer(keys["user"]))).status_code == 200
    assert (await gw.client.post("/v1/chat/completions", json=chat(content="other"), headers=bearer(keys["user"]))).status_code == 200
    async with browser(gw) as client:
        await sign_in(client, auditor)
        found = (await client.get("/audit/records", params={"team": team, "text": "Bed Fourteen"})).json()["data"]
        assert len(found) == 1 and marker in str(found[0]["prompt"])
        checkpoints = await client.get("/audit/checkpoints")
        assert checkpoints.status_code == 200 and checkpoints.headers["content-type"].startswith("application/x-ndjson")
    refused = await gw.client.get("/audit/records", params={"text": "bed"}, headers=bearer(ADMIN_KEY))
    assert refused.status_code == 400
    export = await gw.client.get("/audit/export", params={"text": "bed"}, headers=bearer(ADMIN_KEY))
    assert export.status_code == 400
    assert (await gw.client.get("/audit/checkpoints", headers=bearer(ADMIN_KEY))).status_code == 403


async def test_a_session_ends_after_its_lifetime_and_after_idling():
    from gateway.console.sessions import MemorySessions

    now = [0.0]
    store = MemorySessions(ttl_s=100, idle_s=30, clock=lambda: now[0])
    session = await store.create("credential", "subject", "team", "api_key")
    for _ in range(4):
        now[0] += 25
        assert await store.get(session.id) is session  # each use restarts the idle clock
    now[0] += 25  # 125 s after sign-in: past the absolute lifetime although used
    assert await store.get(session.id) is None and len(store) == 0
    idle = await store.create("credential", "subject", "team", "api_key")
    now[0] += 31
    assert await store.get(idle.id) is None
    assert await store.get(None) is None and await store.get("forged") is None
    assert not idle.csrf_matches(None) and not idle.csrf_matches(idle.csrf + "x") and idle.csrf_matches(idle.csrf)
    await store.save_login("state", {"verifier": "v"}, ttl_s=10)
    assert await store.take_login("state") == {"verifier": "v"} and await store.take_login("state") is None


async def test_sessions_in_redis_are_shared_and_hold_no_usable_credential():
    import redis.asyncio as aioredis
    from quota_support import redis_url, require_redis

    from gateway.console.redis_sessions import PREFIX, RedisSessions

    url = redis_url(12)
    require_redis(url)
    now = [1000.0]
    one = RedisSessions(url, ttl_s=100, idle_s=30, clock=lambda: now[0])
    other = RedisSessions(url, ttl_s=100, idle_s=30, clock=lambda: now[0])  # another gateway replica
    raw = aioredis.from_url(url)
    try:
        session = await one.create(ADMIN_KEY, "subject", "platform", "api_key")
        seen = await other.get(session.id)
        assert seen is not None and seen.credential == ADMIN_KEY and seen.csrf == session.csrf
        stored = {k: await raw.get(k) for k in await raw.keys(PREFIX + "session:*")}
        assert all(ADMIN_KEY.encode() not in v and session.id.encode() not in v for v in stored.values() if v)
        mine = [k for k, v in stored.items() if v and session.csrf.encode() in v]
        assert len(mine) == 1 and 0 < await raw.pttl(mine[0]) <= 30_000  # the idle lifetime, kept by Redis
        assert await other.get(session.id[:-1] + ("A" if session.id[-1] != "A" else "B")) is None
        now[0] += 101
        assert await other.get(session.id) is None  # past the absolute lifetime
        again = await one.create(ADMIN_KEY, "subject", "platform", "api_key")
        assert (await other.end(again.id)).id == again.id and await one.get(again.id) is None
        await one.save_login("state-x", {"verifier": "v"}, ttl_s=10)
        assert await other.take_login("state-x") == {"verifier": "v"} and await one.take_login("state-x") is None
    finally:
        await raw.aclose()
        await one.shutdown()
        await other.shutdown()


async def test_an_oidc_callback_must_match_a_login_started_in_the_same_browser():
    from gateway.auth.settings import OIDCSettings
    from gateway.console.oidc_login import OIDCLogin, SignInFailed
    from gateway.console.sessions import MemorySessions

    store = MemorySessions(ttl_s=100, idle_s=30)
    login = OIDCLogin(OIDCSettings(issuer="http://127.0.0.1:9", audience=["ward"], client_id="console"), store)
    await store.save_login("started-here", {"verifier": "v", "redirect_uri": "http://gw/console/oidc/callback"}, 60)
    for state, code, bound in (("started-here", "code", "other-browser"), ("started-here", None, "started-here"),
                               ("forged", "code", "forged"), (None, "code", None)):
        with pytest.raises(SignInFailed):
            await login.finish(state, code, bound)
    assert await store.take_login("started-here") is not None  # refused answers did not use up the login
    with pytest.raises(ValueError, match="client_id"):
        OIDCLogin(OIDCSettings(issuer="http://127.0.0.1:9", audience=["ward"]), store)


async def test_the_id_token_must_be_signed_by_the_issuer_for_this_client_and_this_login():
    import time

    from joserfc import jwt
    from joserfc.jwk import RSAKey

    from gateway.auth.settings import OIDCSettings
    from gateway.console.oidc_login import OIDCLogin, SignInFailed
    from gateway.console.sessions import MemorySessions

    issuer_key, other_key = RSAKey.generate_key(2048), RSAKey.generate_key(2048)

    class Keys:  # the issuer's published key, as ProviderKeys finds it by kid
        async def key_for(self, kid, alg):
            return issuer_key if kid == "k1" and alg == "RS256" else None

    settings = OIDCSettings(issuer="https://idp.test", audience=["ward"], client_id="console")
    login = OIDCLogin(settings, MemorySessions(ttl_s=100, idle_s=30), keys=Keys())
    now = int(time.time())
    good = {"iss": "https://idp.test", "aud": "console", "sub": "dr.admin", "exp": now + 300, "iat": now,
            "nonce": "n-1"}

    def token(claims, key=issuer_key, kid="k1", alg="RS256"):
        return jwt.encode({"alg": alg, "kid": kid}, claims, key)

    assert (await login.verify_id_token(token(good), "n-1"))["sub"] == "dr.admin"
    assert (await login.verify_id_token(token({**good, "aud": ["console", "x"]}), "n-1"))["sub"] == "dr.admin"
    refused = [
        (token(good), "another login's nonce"),
        (token({**good, "aud": "ward"}), "n-1"),  # an access token's audience, not the console's
        (token({**good, "iss": "https://evil.test"}), "n-1"),
        (token({**good, "exp": now - 600}), "n-1"),
        (token({k: v for k, v in good.items() if k != "nonce"}), "n-1"),
        (token(good, key=other_key), "n-1"),  # not the issuer's key
        (token(good, kid="k2"), "n-1"),
        (None, "n-1"),
        ("not.a.token", "n-1"),
    ]
    for id_token, nonce in refused:
        with pytest.raises(SignInFailed):
            await login.verify_id_token(id_token, nonce)


async def test_the_console_cookie_does_not_reach_the_inference_api(gw):
    async with browser(gw) as client:
        token = (await sign_in(client, ADMIN_KEY))["csrf_token"]
        answer = await client.post("/v1/chat/completions", json=chat(), headers={"x-csrf-token": token})
        assert answer.status_code == 401
        assert (await client.get("/v1/models")).status_code == 401


async def test_a_key_session_cannot_choose_another_team(gw):
    async with browser(gw) as client:
        token = (await sign_in(client, ADMIN_KEY))["csrf_token"]
        refused = await client.post("/console/session/team", json={"team": "default"}, headers={"x-csrf-token": token})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "team_not_granted"
        assert (await client.post("/console/session/team", json={"team": "platform"})).status_code == 403  # no CSRF token


async def test_a_signed_export_checks_out_and_any_change_to_it_does_not(gw, capsys):
    from gateway.audit.export import check_signed_export
    from gateway.audit.service import resolve_paths, trusted_keys
    from gateway.settings import GatewaySettings

    team = unique_team("export")
    keys = make_team(gw.url, team, "user")
    for content in ("first note", "second note"):
        assert (await gw.client.post("/v1/chat/completions", json=chat(content=content), headers=bearer(keys["user"]))).status_code == 200
    auditor = make_team(gw.url, unique_team("exporter"), "auditor")["auditor"]
    answer = await gw.client.get("/audit/export", params={"team": team, "signed": "true"}, headers=bearer(auditor))
    assert answer.status_code == 200 and "-signed.jsonl" in answer.headers["content-disposition"]
    lines = answer.content.splitlines(keepends=True)
    assert len(lines) == 3
    settings = GatewaySettings(database_url=gw.url, data_dir=gw.data_dir)
    trusted = trusted_keys(settings.audit, resolve_paths(settings.audit, gw.data_dir))
    trailer, problem = check_signed_export(lines, trusted)
    assert problem is None and trailer["records"] == 2
    # the signature covers what was selected: a team's records cannot pass for the whole log
    assert trailer["selection"] == {"filter": {"team": team}, "teams": None, "kinds": None}
    widened = json.dumps({**trailer, "selection": {"filter": {}, "teams": None, "kinds": None}}).encode() + b"\n"
    assert check_signed_export([*lines[:-1], widened], trusted)[1] == "signature is invalid"
    stripped = json.dumps({k: v for k, v in trailer.items() if k != "selection"}).encode() + b"\n"
    assert check_signed_export([*lines[:-1], stripped], trusted)[1] == "signature is invalid"
    forged = [lines[0].replace(b"first note", b"fifth note"), *lines[1:]]
    assert check_signed_export(forged, trusted)[1] == "the records differ from those that were signed"
    assert check_signed_export(lines[1:], trusted)[1] is not None  # a record left out
    assert check_signed_export(lines[:-1], trusted)[1] == "the file does not end with an export signature"
    csv = await gw.client.get("/audit/export", params={"format": "csv", "signed": "true"}, headers=bearer(auditor))
    assert csv.status_code == 400
    exported = gw.data_dir / "export.jsonl"
    exported.write_bytes(answer.content)
    from ward.cli import main

    assert main(["audit", "verify-export", str(exported), "--data-dir", str(gw.data_dir)]) == 0
    assert f"selected: team={team}" in capsys.readouterr().out
    exported.write_bytes(b"".join(forged))
    assert main(["audit", "verify-export", str(exported), "--data-dir", str(gw.data_dir)]) == 1
    assert "FAILED" in capsys.readouterr().out


async def test_behind_a_proxy_the_public_url_sets_the_origin_the_cookie_and_the_redirect(db):
    """TLS ends at the ingress and the gateway sees plain HTTP under another Host: with console.public_url
    the cookie is still Secure, only the public origin may make changes, and the provider sends the
    browser back to the public address."""
    from urllib.parse import parse_qs, urlsplit

    from fastapi import FastAPI

    from gateway.console.factory import build_console
    from gateway.console.router import build_console_router
    from gateway.settings import GatewaySettings

    public = "https://ward.hospital.example"
    async with fake_workers() as workers, governed_gateway(*db, workers, console={"public_url": public + "/"}) as gw:
        async with browser(gw, "http://gateway-svc:8000") as inside:
            inside.headers["origin"] = public
            response = await inside.post("/console/session", json={"api_key": ADMIN_KEY})
            assert response.status_code == 200 and "secure" in response.headers["set-cookie"].lower()
            token = response.json()["csrf_token"]
            # the browser sends the Secure cookie over HTTPS to the ingress, which passes it on as it is
            inside.headers["cookie"] = response.headers["set-cookie"].split(";")[0]
            team = unique_team("proxy")
            made = await inside.post("/admin/teams", json={"name": team}, headers={"x-csrf-token": token})
            assert made.status_code == 201, made.text
            host_origin = await inside.post("/admin/teams", json={"name": team + "x"},
                                            headers={"x-csrf-token": token, "origin": "http://gateway-svc:8000"})
            assert host_origin.status_code == 403  # the Host's origin is not the console's public one
            plain = await inside.post("/admin/teams", json={"name": team + "y"},
                                      headers={"x-csrf-token": token, "origin": "http://ward.hospital.example"})
            assert plain.status_code == 403  # nor is the public host over HTTP
    with pytest.raises(ValueError, match="public_url"):
        GatewaySettings(console={"public_url": "https://ward.example/console"})

    class Provider:  # what OIDCLogin.start is given, without a provider to talk to
        async def start(self, redirect_uri: str):
            return "https://idp.example/authorize?" + f"redirect_uri={redirect_uri}", "state-1"

    settings = GatewaySettings(console={"public_url": public})
    app = FastAPI()
    app.include_router(build_console_router(settings.console, build_console(settings).sessions, Provider()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway-svc") as client:
        answer = await client.get("/console/oidc/start")
    assert answer.status_code == 303
    assert parse_qs(urlsplit(answer.headers["location"]).query)["redirect_uri"] == [public + "/console/oidc/callback"]
    assert "secure" in answer.headers["set-cookie"].lower()


async def test_an_unreachable_provider_is_a_503_not_a_crash():
    from fastapi import FastAPI

    from gateway.console.factory import build_console
    from gateway.settings import GatewaySettings

    oidc = {"issuer": "http://127.0.0.1:9", "audience": ["ward"], "client_id": "console", "http_timeout_s": 0.5}
    console = build_console(GatewaySettings(auth={"oidc": oidc}))
    app = FastAPI()
    for router in console.routers:
        app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        answer = await client.get("/console/oidc/start")
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "identity_provider_unavailable"
    assert answer.json()["error"]["type"] != "invalid_request_error" and int(answer.headers["retry-after"]) > 0


async def test_an_unreachable_session_store_is_a_503_not_a_crash(db):
    """Sessions live in the quota store's Redis; while it is down, a signed-in browser's calls, a key
    sign-in and an SSO start are answered 503 with Retry-After in OpenAI's shape, never a 500."""
    from gateway.cli import build_app
    from gateway.settings import GatewaySettings

    url, data_dir = db
    settings = GatewaySettings(database_url=url, data_dir=data_dir, auth={"admin_key": ADMIN_KEY},
                               quota={"redis_url": "redis://127.0.0.1:9/0"})
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     headers={"sec-fetch-site": "same-origin", "origin": "http://gateway"}) as client:
            client.cookies.set("ward_console", "a-session-id")
            answers = [await client.get("/console/session"), await client.get("/admin/teams"),
                       await client.post("/admin/teams", json={"name": "x"}, headers={"x-csrf-token": "t"})]
            client.cookies.clear()
            answers.append(await client.post("/console/session", json={"api_key": ADMIN_KEY}))
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "session_store_unavailable" and answer.headers["retry-after"]
    assert answers[0].headers["content-security-policy"] == CONTENT_SECURITY_POLICY
