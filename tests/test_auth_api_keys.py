"""API keys: format, storage as a hash, lookups against SQLite and PostgreSQL, revocation, expiry, bootstrap."""
from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from auth_support import make_app, postgres_url, sqlite_url
from gateway.auth.api_key_auth import ApiKeyAuthenticator
from gateway.auth.api_key_format import hash_secret, new_key, parse_key, secret_matches
from gateway.auth.errors import AuthenticationError, PermissionDenied
from gateway.auth.factory import BOOTSTRAP_KEY_DESCRIPTION, build_identity, ensure_bootstrap_admin_key
from gateway.auth.principal import PLATFORM_TEAM, AuthMethod, Role
from gateway.auth.records import InvalidIdentityInput, utcnow
from gateway.auth.settings import AuthSettings
from gateway.auth.stores import KeyStore, TeamNotFound, TeamStore
from gateway.db import create_db_engine
from gateway.db.models_identity import ApiKey

ADMIN_KEY = "admin-key-for-tests-0123456789abcdef"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        eng = create_db_engine(sqlite_url(tmp_path))
        yield eng
        eng.dispose()
    else:
        with postgres_url() as url:
            eng = create_db_engine(url)
            yield eng
            eng.dispose()


def test_key_text_has_public_id_and_long_secret():
    key_id, text = new_key()
    parsed = parse_key(text)
    assert parsed is not None and parsed.key_id == key_id
    assert text.startswith(f"ward-{key_id}.")
    assert len(parsed.secret) == 43  # 32 random bytes, urlsafe base64
    assert new_key()[1] != text


@pytest.mark.parametrize("bad", ["", "ward-", "sk-abc", "ward-XYZ.abc", "ward-0123456789abcdef", "ward-0123456789abcdef." + "a" * 42,
                                 "ward-0123456789abcdef." + "a" * 43 + "=", " ward-0123456789abcdef." + "a" * 43])
def test_malformed_key_text_does_not_parse(bad):
    assert parse_key(bad) is None


def test_secret_hash_is_bound_to_the_key_id():
    key_id, text = new_key()
    secret = parse_key(text).secret
    stored = hash_secret(key_id, secret)
    assert secret_matches(key_id, secret, stored)
    assert not secret_matches("0" * 16, secret, stored)
    assert not secret_matches(key_id, secret[:-1] + ("A" if secret[-1] != "A" else "B"), stored)


def test_database_keeps_only_the_hash(engine):
    TeamStore(engine).create("radiology")
    record, key_text = KeyStore(engine).create("radiology", Role.USER, description="pacs bridge")
    with Session(engine) as s:
        row = s.scalars(select(ApiKey)).one()
        dumped = " ".join(str(v) for v in s.execute(text("SELECT * FROM api_keys")).one())
    secret = parse_key(key_text).secret
    assert row.secret_hash == hash_secret(record.id, secret)
    assert secret not in dumped and key_text not in dumped


def test_key_for_unknown_team_is_refused(engine):
    with pytest.raises(TeamNotFound):
        KeyStore(engine).create("nobody")


def test_expiry_in_the_past_is_refused(engine):
    TeamStore(engine).create("lab")
    with pytest.raises(InvalidIdentityInput):
        KeyStore(engine).create("lab", expires_at=utcnow() - timedelta(seconds=1))


def _auth(authn: ApiKeyAuthenticator, text_: str):
    return asyncio.run(authn.authenticate_key(text_))


def test_valid_key_gives_team_principal_with_effective_roles(engine):
    TeamStore(engine).create("cardiology")
    record, text_ = KeyStore(engine).create("cardiology", Role.TEAM_ADMIN)
    p = _auth(ApiKeyAuthenticator(KeyStore(engine)), text_)
    assert (p.team, p.subject, p.key_id, p.auth_method) == ("cardiology", record.id, record.id, AuthMethod.API_KEY)
    assert p.roles == frozenset({Role.TEAM_ADMIN, Role.USER})
    assert p.cache_salt == "team:cardiology"


def test_wrong_secret_for_a_real_key_id_is_rejected(engine):
    TeamStore(engine).create("cardiology")
    record, text_ = KeyStore(engine).create("cardiology")
    forged = f"ward-{record.id}." + "A" * 43
    with pytest.raises(AuthenticationError) as err:
        _auth(ApiKeyAuthenticator(KeyStore(engine)), forged)
    assert err.value.code == "invalid_api_key"


def test_revoked_key_is_rejected_within_the_cache_time(engine):
    TeamStore(engine).create("oncology")
    keys = KeyStore(engine)
    record, text_ = keys.create("oncology")
    authn = ApiKeyAuthenticator(keys, cache_ttl_s=0.3)
    assert _auth(authn, text_).team == "oncology"
    keys.revoke(record.id)  # e.g. by another gateway or the CLI: this gateway's cache is not told
    time.sleep(0.35)
    with pytest.raises(AuthenticationError) as err:
        _auth(authn, text_)
    assert err.value.code == "revoked_api_key"


def test_principal_is_built_once_per_cached_lookup_and_never_outlives_it(engine):
    teams = TeamStore(engine)
    teams.create("oncology")
    keys = KeyStore(engine)
    record, text_ = keys.create("oncology")
    authn = ApiKeyAuthenticator(keys, cache_ttl_s=0.3)
    first = _auth(authn, text_)
    assert _auth(authn, text_) is first  # the same lookup: the same principal
    with pytest.raises(AuthenticationError):  # the secret is still checked on every request
        _auth(authn, f"ward-{record.id}." + "A" * 43)
    teams.set_disabled("oncology", True)
    time.sleep(0.35)  # a fresh lookup sees the team disabled: the kept principal is not served
    with pytest.raises(PermissionDenied):
        _auth(authn, text_)
    teams.set_disabled("oncology", False)
    time.sleep(0.35)
    again = _auth(authn, text_)
    assert again == first and again is not first  # built anew from the new lookup


def test_forgetting_a_key_drops_its_principal(engine):
    TeamStore(engine).create("oncology")
    keys = KeyStore(engine)
    record, text_ = keys.create("oncology")
    authn = ApiKeyAuthenticator(keys, cache_ttl_s=60)
    assert _auth(authn, text_).team == "oncology"
    keys.revoke(record.id)
    authn.forget(record.id)  # this gateway's own revocation takes effect at once
    with pytest.raises(AuthenticationError) as err:
        _auth(authn, text_)
    assert err.value.code == "revoked_api_key"


def test_revocation_is_idempotent(engine):
    TeamStore(engine).create("oncology")
    keys = KeyStore(engine)
    record, _ = keys.create("oncology")
    _, first = keys.revoke(record.id)
    before, second = keys.revoke(record.id)
    assert before.revoked_at == first.revoked_at == second.revoked_at is not None


def test_expired_key_is_rejected(engine):
    TeamStore(engine).create("icu")
    record, text_ = KeyStore(engine).create("icu", expires_at=utcnow() + timedelta(seconds=0.3))
    authn = ApiKeyAuthenticator(KeyStore(engine), cache_ttl_s=0)
    assert _auth(authn, text_).team == "icu"
    time.sleep(0.35)
    with pytest.raises(AuthenticationError) as err:
        _auth(authn, text_)
    assert err.value.code == "expired_api_key"


def test_key_of_disabled_team_is_forbidden(engine):
    teams = TeamStore(engine)
    teams.create("er")
    _, text_ = KeyStore(engine).create("er")
    teams.set_disabled("er", True)
    with pytest.raises(PermissionDenied) as err:
        _auth(ApiKeyAuthenticator(KeyStore(engine), cache_ttl_s=0), text_)
    assert err.value.code == "team_disabled"


def test_configured_admin_key_is_a_platform_admin(engine):
    authn = ApiKeyAuthenticator(KeyStore(engine), admin_key=ADMIN_KEY)
    p = _auth(authn, ADMIN_KEY)
    assert p.team == PLATFORM_TEAM and p.has(Role.PLATFORM_ADMIN) and p.has(Role.USER) and not p.has(Role.AUDITOR)
    with pytest.raises(AuthenticationError):
        _auth(authn, ADMIN_KEY[:-1] + "X")


def test_admin_key_must_be_long():
    with pytest.raises(ValueError):
        AuthSettings(admin_key="short")


def test_bootstrap_key_is_created_once(engine):
    first = ensure_bootstrap_admin_key(engine)
    assert first is not None and parse_key(first) is not None
    assert ensure_bootstrap_admin_key(engine) is None
    p = _auth(ApiKeyAuthenticator(KeyStore(engine)), first)
    assert p.team == PLATFORM_TEAM and p.has(Role.PLATFORM_ADMIN)
    keys = KeyStore(engine).list(PLATFORM_TEAM)
    assert [k.description for k in keys] == [BOOTSTRAP_KEY_DESCRIPTION]
    KeyStore(engine).revoke(keys[0].id)  # revoked: the next `ward up` makes a new one
    assert ensure_bootstrap_admin_key(engine) is not None


def test_steady_state_key_authentication_is_well_under_a_millisecond(tmp_path):
    engine = create_db_engine(sqlite_url(tmp_path))
    TeamStore(engine).create("perf")
    _, text_ = KeyStore(engine).create("perf")
    identity = build_identity(AuthSettings(), engine)

    async def measure() -> float:
        from starlette.requests import Request

        req = Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"authorization", f"Bearer {text_}".encode())]})
        await identity.authenticator.authenticate(req)  # fills the cache
        n = 2000
        start = time.perf_counter()
        for _ in range(n):
            await identity.authenticator.authenticate(req)
        return (time.perf_counter() - start) / n

    per_call = asyncio.run(measure())
    print(f"{per_call * 1e6:.1f} µs per authentication")
    assert per_call < 100e-6, f"{per_call * 1e6:.1f} µs per authentication"


def test_http_401_has_challenge_and_openai_shape(tmp_path):
    engine = create_db_engine(sqlite_url(tmp_path))
    with TestClient(make_app(build_identity(AuthSettings(), engine))) as client:
        missing = client.post("/v1/chat/completions")
        bad = client.post("/v1/chat/completions", headers={"Authorization": "Bearer ward-0123456789abcdef." + "a" * 43})
        basic = client.post("/v1/chat/completions", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="ward"'
    assert missing.json()["error"]["code"] == "missing_credentials"
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert basic.status_code == 401 and 'error="invalid_request"' in basic.headers["www-authenticate"]
