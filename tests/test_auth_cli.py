"""`ward teams` and `ward keys` as an operator runs them (real processes on a fresh database)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from auth_support import ROOT
from gateway.auth.api_key_auth import ApiKeyAuthenticator
from gateway.auth.cli_support import parse_expiry
from gateway.auth.errors import AuthenticationError
from gateway.auth.records import InvalidIdentityInput
from gateway.audit.signing import Signer
from gateway.auth.stores import KeyStore
from gateway.db import create_db_engine


def ward(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WARD_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("WARD_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "ward", *args], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)


def test_operator_creates_team_and_key_then_revokes_it(tmp_path):
    assert ward(tmp_path, "teams", "create", "pathology", "--capture-level", "redacted").returncode == 0
    created = ward(tmp_path, "keys", "create", "--team", "pathology", "--role", "team_admin", "--expires", "30d", "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert made["team"] == "pathology" and made["role"] == "team_admin" and made["key"].startswith(f"ward-{made['id']}.")
    expires = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(timezone.utc) <= timedelta(days=30)

    listed = json.loads(ward(tmp_path, "keys", "list", "--team", "pathology", "--json").stdout)
    assert [k["id"] for k in listed] == [made["id"]] and made["key"] not in json.dumps(listed)
    teams = json.loads(ward(tmp_path, "teams", "list", "--json").stdout)
    assert {t["name"]: t["capture_level"] for t in teams}["pathology"] == "redacted"

    engine = create_db_engine(f"sqlite:///{tmp_path / 'ward.db'}")
    authn = ApiKeyAuthenticator(KeyStore(engine), cache_ttl_s=0)
    assert asyncio.run(authn.authenticate_key(made["key"])).team == "pathology"
    revoked = ward(tmp_path, "keys", "revoke", made["id"])
    assert revoked.returncode == 0 and made["id"] in revoked.stdout
    with pytest.raises(AuthenticationError):
        asyncio.run(authn.authenticate_key(made["key"]))
    engine.dispose()


def test_plain_create_prints_only_the_key_on_stdout(tmp_path):
    ward(tmp_path, "teams", "create", "lab")
    out = ward(tmp_path, "keys", "create", "--team", "lab")
    assert out.returncode == 0 and out.stdout.count("\n") == 1 and out.stdout.startswith("ward-")
    assert "shown once" in out.stderr


@pytest.mark.parametrize("args,message", [
    (("keys", "create", "--team", "ghost"), "no team 'ghost'"),
    (("keys", "revoke", "ffffffffffffffff"), "no key"),
    (("teams", "create", "Not Valid"), "invalid team name"),
    (("keys", "create", "--team", "platform", "--expires", "soonish"), "cannot read expiry"),
    # the admin API's limits: refused, not stored past the column (SQLite) or a traceback (PostgreSQL)
    (("teams", "create", "lab", "--display-name", "x" * 201), "display_name"),
    (("keys", "create", "--team", "platform", "--description", "d" * 201), "description"),
    # printed raw by `ward teams list` and `ward keys list`: no terminal escapes, no forged lines
    (("teams", "create", "lab", "--display-name", "Lab\x1b[2J"), "control character"),
    (("keys", "create", "--team", "platform", "--description", "ok\nrevoked"), "control character"),
    (("teams", "create", "lab", "--display-name", "bal\u202eKO"), "control character"),
])
def test_operator_errors_exit_2_with_a_message(tmp_path, args, message):
    out = ward(tmp_path, *args)
    assert out.returncode == 2 and message in out.stderr


def test_team_disable_and_enable(tmp_path):
    ward(tmp_path, "teams", "create", "icu")
    assert "disabled" in ward(tmp_path, "teams", "disable", "icu").stdout
    assert json.loads(ward(tmp_path, "teams", "list", "--json").stdout)[0]["disabled"] is True
    assert "enabled" in ward(tmp_path, "teams", "enable", "icu").stdout


def test_expiry_forms():
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert parse_expiry("90m", now) == now + timedelta(minutes=90)
    assert parse_expiry("2w", now) == now + timedelta(weeks=2)
    assert parse_expiry("2030-02-01", now) == datetime(2030, 2, 1, tzinfo=timezone.utc)
    assert parse_expiry("2030-02-01T10:00:00+01:00", now) == datetime(2030, 2, 1, 9, tzinfo=timezone.utc)
    with pytest.raises(InvalidIdentityInput):
        parse_expiry("tomorrow", now)
    for beyond in ("99999999d", "999999999999999999999d"):  # past year 9999: refused, not a traceback
        with pytest.raises(InvalidIdentityInput):
            parse_expiry(beyond, now)


def test_active_lists_only_keys_that_can_still_authenticate(tmp_path):
    ward(tmp_path, "teams", "create", "ward7")
    ids = [json.loads(ward(tmp_path, "keys", "create", "--team", "ward7", "--json").stdout)["id"] for _ in range(3)]
    live, revoked, expired = ids
    ward(tmp_path, "keys", "revoke", revoked)
    engine = create_db_engine(f"sqlite:///{tmp_path / 'ward.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE api_keys SET expires_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (expired,))
    engine.dispose()
    listed = json.loads(ward(tmp_path, "keys", "list", "--team", "ward7", "--active", "--json").stdout)
    assert [k["id"] for k in listed] == [live]
    assert len(json.loads(ward(tmp_path, "keys", "list", "--team", "ward7", "--json").stdout)) == 3


def test_commands_sign_with_the_key_the_gateway_is_told_of_in_the_environment(tmp_path):
    # The gateway reads WARD_AUDIT__SIGNING_KEY_PATH; an admin command run beside it (a container's
    # shell) must sign with that key too, not make a throwaway one under the data directory.
    key = tmp_path / "secrets" / "audit-key.pem"
    key.parent.mkdir()
    Signer.load_or_create(key)
    env = {**os.environ, "WARD_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT),
           "WARD_AUDIT__SIGNING_KEY_PATH": str(key)}
    env.pop("WARD_DATABASE_URL", None)
    for args in (("teams", "create", "lab"), ("audit", "verify")):
        out = subprocess.run([sys.executable, "-m", "ward", *args], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
    assert not (tmp_path / "data" / "audit" / "checkpoint-key.pem").exists()
    assert "head signed" in out.stdout
