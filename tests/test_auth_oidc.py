"""OIDC resource server against a real OpenID provider (npm oidc-provider): valid tokens, key rotation
without restart, and the attack matrix (every forged or unfit token is rejected)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from auth_support import make_app, sqlite_url
from gateway.auth.errors import IdentityProviderUnavailable
from gateway.auth.factory import build_identity
from gateway.auth.oidc import OIDCAuthenticator
from gateway.auth.oidc_keys import ProviderKeys
from gateway.auth.settings import AuthSettings, OIDCSettings
from gateway.auth.stores import TeamStore
from gateway.db import create_db_engine
from oidc_provider.provider import OIDCProvider, TestClient as IdPClient, new_signing_key

AUD = "https://ward.test/v1"
CLIENTS = [
    IdPClient("svc-radiology", "secret-radiology-0123456789", {"groups": ["grp-radiology", "grp-unrelated"], "roles": ["ward-user"]}),
    IdPClient("svc-cardio-admin", "secret-cardio-0123456789", {"groups": ["grp-cardiology"], "roles": ["ward-team-admin"]}),
    IdPClient("svc-ghost", "secret-ghost-0123456789", {"groups": ["grp-ghost"]}),
    IdPClient("svc-nogroup", "secret-nogroup-0123456789", {"groups": ["grp-unrelated"]}),
    IdPClient("svc-two-teams", "secret-two-0123456789", {"groups": ["grp-radiology", "grp-cardiology"]}),
    IdPClient("svc-admin-auditor", "secret-admin-auditor-0123", {"groups": ["grp-radiology"], "roles": ["ward-admin", "ward-auditor"]}),
    IdPClient("svc-auditor", "secret-auditor-0123456789", {"groups": ["grp-radiology"], "roles": ["ward-auditor"]}),
]


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    idp = OIDCProvider(tmp_path_factory.mktemp("oidc"), AUD, CLIENTS, [new_signing_key("k1")]).start()
    yield idp
    idp.stop()


def oidc_settings(issuer: str, **overrides) -> OIDCSettings:
    values = dict(
        issuer=issuer,
        audience=[AUD],
        team_claim="groups",
        team_map={"grp-radiology": "radiology", "grp-cardiology": "cardiology", "grp-ghost": "ghost"},
        roles_claim="roles",
        role_map={"ward-user": "user", "ward-team-admin": "team_admin", "ward-admin": "platform_admin", "ward-auditor": "auditor"},
        leeway_s=5,
        jwks_refresh_min_interval_s=0.2,
    )
    values.update(overrides)
    return OIDCSettings(**values)


@pytest.fixture(scope="module")
def client(provider, tmp_path_factory):
    engine = create_db_engine(sqlite_url(tmp_path_factory.mktemp("oidc-db")))
    TeamStore(engine).create("radiology")
    TeamStore(engine).create("cardiology")
    identity = build_identity(AuthSettings(oidc=oidc_settings(provider.issuer)), engine)
    with TestClient(make_app(identity)) as c:
        yield c
    engine.dispose()


def call(client: TestClient, token: str, path: str = "/v1/chat/completions", **headers):
    return client.post(path, headers={"Authorization": f"Bearer {token}", **headers})


# --- forging helpers ------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(provider: OIDCProvider, **changes) -> dict:
    now = int(time.time())
    base = {"iss": provider.issuer, "aud": AUD, "sub": "svc-radiology", "client_id": "svc-radiology",
            "groups": ["grp-radiology"], "iat": now, "exp": now + 300}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(key: RSAKey, payload: dict, alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "at+jwt"}, payload, key, algorithms=[alg])


# --- valid tokens ---------------------------------------------------------------------------------
def test_provider_token_maps_to_team_and_roles(provider, client):
    r = call(client, provider.token("svc-radiology"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["team"] == "radiology" and body["subject"] == "svc-radiology"
    assert body["roles"] == ["user"] and body["method"] == "oidc" and body["cache_salt"] == "team:radiology"


def test_team_admin_role_from_the_roles_claim(provider, client):
    token = provider.token("svc-cardio-admin")
    whoami = client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert whoami.json()["roles"] == ["team_admin", "user"]
    teams = client.get("/admin/teams", headers={"Authorization": f"Bearer {token}"})
    assert teams.status_code == 200 and [t["name"] for t in teams.json()["data"]] == ["cardiology"]


def test_several_teams_need_an_explicit_choice(provider, client):
    token = provider.token("svc-two-teams")
    ambiguous = call(client, token)
    assert ambiguous.status_code == 403 and ambiguous.json()["error"]["code"] == "team_ambiguous"
    chosen = call(client, token, **{"X-Ward-Team": "cardiology"})
    assert chosen.status_code == 200 and chosen.json()["team"] == "cardiology"
    assert call(client, token, **{"X-Ward-Team": "oncology"}).status_code == 403


def test_rotated_signing_key_is_picked_up_without_restart(provider, client):
    old_key = provider.keys[0]
    old_token = provider.token("svc-radiology")
    assert call(client, old_token).status_code == 200
    new_key = new_signing_key("k2")
    provider.restart([new_key, old_key])  # the IdP rotates: k2 signs, k1 still published
    new_token = provider.token("svc-radiology")
    assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "==")).get("kid") == "k2"
    time.sleep(0.25)  # the minimum interval between JWKS re-fetches
    assert call(client, new_token).status_code == 200
    assert call(client, old_token).status_code == 200


# --- the attack matrix ----------------------------------------------------------------------------
def _assert_invalid_token(r: httpx.Response, reason: str):
    """401 with the bearer challenge, for the expected reason (so a test cannot pass by accident)."""
    assert r.status_code == 401, r.text
    assert reason in r.json()["error"]["message"]
    assert r.headers["www-authenticate"].startswith('Bearer realm="ward", error="invalid_token"')
    assert r.json()["error"]["type"] == "authentication_error"


def test_expired_token_is_rejected(provider, client):
    now = int(time.time())
    _assert_invalid_token(call(client, signed(provider.keys[0], claims(provider, iat=now - 600, exp=now - 60))), 'has expired')


def test_not_yet_valid_token_is_rejected(provider, client):
    now = int(time.time())
    _assert_invalid_token(call(client, signed(provider.keys[0], claims(provider, nbf=now + 120))), "'nbf'")


def test_token_issued_in_the_future_is_rejected(provider, client):
    now = int(time.time())
    _assert_invalid_token(call(client, signed(provider.keys[0], claims(provider, iat=now + 120, exp=now + 600))), "'iat'")


def test_wrong_issuer_is_rejected(provider, client):
    _assert_invalid_token(call(client, signed(provider.keys[0], claims(provider, iss="https://evil.example"))), "'iss'")


def test_wrong_audience_is_rejected(provider, client):
    _assert_invalid_token(call(client, signed(provider.keys[0], claims(provider, aud="https://other-api.example"))), "'aud'")


def test_token_without_expiry_is_rejected(provider, client):
    _assert_invalid_token(call(client, signed(provider.keys[0], claims(provider, exp=None))), "'exp'")


def test_alg_none_is_rejected(provider, client):
    header = b64(json.dumps({"alg": "none", "kid": provider.keys[0].kid}).encode())
    payload = b64(json.dumps(claims(provider)).encode())
    _assert_invalid_token(call(client, f"{header}.{payload}."), 'signing algorithm')


def test_hs256_signed_with_the_public_key_is_rejected(provider, client):
    public_pem = provider.keys[0].as_pem(private=False)
    header = b64(json.dumps({"alg": "HS256", "kid": provider.keys[0].kid, "typ": "at+jwt"}).encode())
    payload = b64(json.dumps(claims(provider)).encode())
    sig = b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    _assert_invalid_token(call(client, f"{header}.{payload}.{sig}"), 'signing algorithm')


def test_unknown_kid_from_another_key_is_rejected(provider, client):
    attacker = RSAKey.generate_key(2048, parameters={"kid": "attacker-key", "alg": "RS256"}, private=True)
    _assert_invalid_token(call(client, signed(attacker, claims(provider))), 'not signed by a key of the configured issuer')


def test_known_kid_signed_by_another_key_is_rejected(provider, client):
    attacker = RSAKey.generate_key(2048, parameters={"kid": provider.keys[0].kid, "alg": "RS256"}, private=True)
    _assert_invalid_token(call(client, signed(attacker, claims(provider))), 'Invalid access token.')


def test_tampered_payload_is_rejected(provider, client):
    header, payload, sig = provider.token("svc-radiology").split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["groups"] = ["grp-cardiology"]
    _assert_invalid_token(call(client, f"{header}.{b64(json.dumps(body).encode())}.{sig}"), 'Invalid access token.')


def test_garbage_token_is_rejected(client):
    _assert_invalid_token(call(client, "not.a.jwt"), 'Invalid access token.')


def test_token_for_a_team_ward_does_not_know_is_forbidden(provider, client):
    r = call(client, provider.token("svc-ghost"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "team_unknown"


def test_token_whose_groups_map_to_no_team_is_forbidden(provider, client):
    r = call(client, provider.token("svc-nogroup"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "team_unknown"


def test_user_token_cannot_read_the_audit_log(provider, client):
    r = client.get("/v1/audit/records", headers={"Authorization": f"Bearer {provider.token('svc-radiology')}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"


def test_a_token_granting_admin_and_auditor_together_is_refused(provider, client):
    both = provider.token("svc-admin-auditor")
    for path, method in (("/v1/audit/records", "GET"), ("/v1/chat/completions", "POST"), ("/admin/teams", "GET")):
        r = client.request(method, path, headers={"Authorization": f"Bearer {both}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "conflicting_roles", (path, r.text)
    alone = client.get("/v1/audit/records", headers={"Authorization": f"Bearer {provider.token('svc-auditor')}"})
    assert alone.status_code == 200  # the auditor role by itself, from the identity provider, is honoured


def test_no_token_appears_in_logs(provider, client, caplog):
    token = provider.token("svc-radiology")
    header, payload, sig = token.split(".")
    with caplog.at_level(logging.DEBUG):
        call(client, token)
        call(client, f"{header}.{payload}.{sig[:-4]}AAAA")
        call(client, "ward-0123456789abcdef." + "b" * 43)
    assert sig not in caplog.text and payload not in caplog.text and "b" * 43 not in caplog.text


# --- key cache behaviour, with a scripted provider --------------------------------------------------
def _scripted_provider(jwks: dict, counter: dict, issuer: str = "https://idp.example") -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        counter[request.url.path] = counter.get(request.url.path, 0) + 1
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": issuer, "jwks_uri": f"{issuer}/jwks"})
        return httpx.Response(200, json=jwks)

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_unknown_kid_flood_refetches_at_most_once_per_interval():
    key = new_signing_key("real")
    counter: dict = {}
    now = [1000.0]
    settings = oidc_settings("https://idp.example", jwks_refresh_min_interval_s=30)
    keys = ProviderKeys(settings, _scripted_provider({"keys": [key.as_dict(private=False)]}, counter), clock=lambda: now[0])

    async def flood():
        assert await keys.key_for("real", "RS256") is not None
        for i in range(50):
            assert await keys.key_for(f"forged-{i}", "RS256") is None
        now[0] += 31
        assert await keys.key_for("forged-late", "RS256") is None

    asyncio.run(flood())
    assert counter["/jwks"] == 2 and counter["/.well-known/openid-configuration"] == 1


def test_discovery_naming_another_issuer_is_refused():
    settings = oidc_settings("https://idp.example")
    keys = ProviderKeys(settings, _scripted_provider({"keys": []}, {}, issuer="https://evil.example"))
    with pytest.raises(IdentityProviderUnavailable):
        asyncio.run(keys.key_for("k", "RS256"))


def test_symmetric_keys_in_the_jwks_are_ignored():
    oct_jwk = {"kty": "oct", "kid": "shared", "k": b64(b"0" * 32), "alg": "HS256"}
    keys = ProviderKeys(oidc_settings("https://idp.example"), _scripted_provider({"keys": [oct_jwk]}, {}))
    assert asyncio.run(keys.key_for("shared", "HS256")) is None


def test_unreachable_provider_answers_503(tmp_path):
    from auth_support import free_port

    engine = create_db_engine(sqlite_url(tmp_path))
    settings = AuthSettings(oidc=oidc_settings(f"http://127.0.0.1:{free_port()}", http_timeout_s=1))
    with TestClient(make_app(build_identity(settings, engine))) as c:
        r = call(c, "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJ4In0.c2ln")
    assert r.status_code == 503 and r.json()["error"]["code"] == "identity_provider_unavailable"


def test_steady_state_token_validation_is_well_under_a_millisecond():
    key = new_signing_key("perf")
    settings = oidc_settings("https://idp.example")
    authn = OIDCAuthenticator(settings, ProviderKeys(settings, _scripted_provider({"keys": [key.as_dict(private=False)]}, {})))
    now = int(time.time())
    token = signed(key, {"iss": "https://idp.example", "aud": AUD, "sub": "svc", "groups": ["grp-radiology"], "iat": now, "exp": now + 300})

    async def measure() -> float:
        await authn.authenticate_token(token)  # discovery and JWKS fetched once
        n = 300
        start = time.perf_counter()
        for _ in range(n):
            await authn.authenticate_token(token)
        return (time.perf_counter() - start) / n

    per_call = asyncio.run(measure())
    assert per_call < 1e-3, f"{per_call * 1e6:.0f} µs per token"


def test_provider_outage_keeps_cached_keys_and_retries_after_the_interval():
    key = new_signing_key("steady")
    counter: dict = {}
    state = {"up": True}
    now = [0.0]

    def handler(request: httpx.Request) -> httpx.Response:
        counter[request.url.path] = counter.get(request.url.path, 0) + 1
        if not state["up"]:
            raise httpx.ConnectError("down")
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": "https://idp.example", "jwks_uri": "https://idp.example/jwks"})
        return httpx.Response(200, json={"keys": [key.as_dict(private=False)]})

    settings = oidc_settings("https://idp.example", jwks_refresh_min_interval_s=30, jwks_max_age_s=60)
    keys = ProviderKeys(settings, httpx.AsyncClient(transport=httpx.MockTransport(handler)), clock=lambda: now[0])

    async def scenario():
        assert await keys.key_for("steady", "RS256") is not None
        state["up"] = False
        now[0] = 61  # cached keys are stale: a refresh is tried and fails, the cached key still serves
        assert await keys.key_for("steady", "RS256") is not None
        now[0] = 70  # within the interval after the failed attempt: no new attempt
        assert await keys.key_for("steady", "RS256") is not None
        assert counter["/jwks"] == 2
        state["up"] = True
        now[0] = 92
        assert await keys.key_for("steady", "RS256") is not None
        assert counter["/jwks"] == 3

    asyncio.run(scenario())


@pytest.mark.parametrize("discovery, jwks", [
    ([{"issuer": "https://idp.example"}], None),  # a discovery document that is not an object
    (None, [{"kty": "RSA"}]),  # a JWKS that is not an object
    (None, {"keys": "k1"}),
    (None, {"keys": None}),
])
def test_a_malformed_provider_document_is_503_not_a_crash(discovery, jwks):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=discovery or {"issuer": "https://idp.example", "jwks_uri": "https://idp.example/jwks"})
        return httpx.Response(200, json=jwks)

    keys = ProviderKeys(oidc_settings("https://idp.example"), httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    with pytest.raises(IdentityProviderUnavailable):
        asyncio.run(keys.key_for("k1", "RS256"))


def test_a_malformed_key_in_the_jwks_does_not_take_the_others_down():
    good = new_signing_key("good")
    odd = [{"kty": "RSA", "kid": "odd-alg", "alg": ["RS256"]}, {"kty": ["RSA"], "kid": "odd-kty"},
           {"kty": "EC", "kid": "odd-crv", "crv": {"name": "P-256"}}, "not-a-key", {"kty": "RSA", "kid": 7}]
    keys = ProviderKeys(oidc_settings("https://idp.example"), _scripted_provider({"keys": [*odd, good.as_dict(private=False)]}, {}))
    assert asyncio.run(keys.key_for("good", "RS256")) is not None


def test_a_rotated_key_while_the_provider_is_unreachable_is_503_not_401():
    """The IdP rotated to a key we have not fetched and its JWKS endpoint is down: the token may be
    genuine, so the caller is told to retry (503 with Retry-After), not that its token is invalid."""
    old, new = new_signing_key("old"), new_signing_key("new")
    state = {"up": True, "keys": [old]}
    now = [0.0]

    def handler(request: httpx.Request) -> httpx.Response:
        if not state["up"]:
            raise httpx.ConnectError("down")
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": "https://idp.example", "jwks_uri": "https://idp.example/jwks"})
        return httpx.Response(200, json={"keys": [k.as_dict(private=False) for k in state["keys"]]})

    settings = oidc_settings("https://idp.example", jwks_refresh_min_interval_s=30)
    keys = ProviderKeys(settings, httpx.AsyncClient(transport=httpx.MockTransport(handler)), clock=lambda: now[0])
    authn = OIDCAuthenticator(settings, keys)
    token = signed(new, {"iss": "https://idp.example", "aud": AUD, "sub": "svc", "groups": ["grp-radiology"],
                         "iat": int(time.time()), "exp": int(time.time()) + 300})

    async def scenario():
        assert await keys.key_for("old", "RS256") is not None
        state.update(up=False, keys=[new, old])
        now[0] = 31
        with pytest.raises(IdentityProviderUnavailable):
            await authn.authenticate_token(token)
        now[0] = 40  # within the interval: no new attempt, and still no way to check the token
        with pytest.raises(IdentityProviderUnavailable):
            await authn.authenticate_token(token)
        assert await keys.key_for("old", "RS256") is not None  # cached keys keep serving meanwhile
        state["up"] = True
        now[0] = 62
        assert (await authn.authenticate_token(token)).team == "radiology"

    asyncio.run(scenario())
