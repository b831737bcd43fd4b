"""The /admin API and the role matrix: each role can do exactly what it should on inference, admin and
audit routes; every admin change reaches the audit seam with who, what, before and after."""
from __future__ import annotations

import contextlib

import pytest
from fastapi.testclient import TestClient

from auth_support import make_app, postgres_url, sqlite_url
from gateway.auth.factory import build_identity
from gateway.auth.principal import PLATFORM_TEAM, Role
from gateway.auth.settings import AuthSettings
from gateway.auth.stores import KeyStore, TeamStore
from gateway.db import create_db_engine

ADMIN_KEY = "bootstrap-admin-key-0123456789abcdef"


class RecordingAuditSeam:
    def __init__(self):
        self.changes: list[dict] = []

    async def record_admin_change(self, principal, action, target, before, after) -> None:
        self.changes.append({"who": principal.subject, "action": action, "target": target, "before": before, "after": after})


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def world(request, tmp_path_factory):
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = sqlite_url(tmp_path_factory.mktemp("admin"))
        else:
            url = stack.enter_context(postgres_url())
        yield from _world(url)


def _world(url: str):
    engine = create_db_engine(url)
    seam = RecordingAuditSeam()
    identity = build_identity(AuthSettings(admin_key=ADMIN_KEY, api_key_cache_ttl_s=0), engine, recorder=seam)
    teams, keys = TeamStore(engine), KeyStore(engine)
    teams.create("radiology")
    teams.create("cardiology")
    creds = {
        "platform_admin": ADMIN_KEY,
        "team_admin": keys.create("radiology", Role.TEAM_ADMIN)[1],
        "other_team_admin": keys.create("cardiology", Role.TEAM_ADMIN)[1],
        "user": keys.create("radiology", Role.USER)[1],
        "auditor": keys.create(PLATFORM_TEAM, Role.AUDITOR)[1],
        "security_officer": keys.create(PLATFORM_TEAM, Role.SECURITY_OFFICER)[1],
    }
    with TestClient(make_app(identity)) as client:
        yield {"client": client, "creds": creds, "seam": seam, "keys": keys}
    engine.dispose()


def as_(world, who: str) -> dict:
    return {"Authorization": f"Bearer {world['creds'][who]}"}


ROLES = ["platform_admin", "team_admin", "other_team_admin", "user", "auditor", "security_officer"]


@pytest.mark.parametrize("who,allowed", [("platform_admin", True), ("team_admin", True), ("other_team_admin", True), ("user", True),
                                         ("auditor", False), ("security_officer", False)])
def test_inference_route(world, who, allowed):
    r = world["client"].post("/v1/chat/completions", headers=as_(world, who))
    assert r.status_code == (200 if allowed else 403)


@pytest.mark.parametrize("who", ROLES)
def test_audit_route_is_for_auditors_only(world, who):
    r = world["client"].get("/v1/audit/records", headers=as_(world, who))
    assert r.status_code == (200 if who == "auditor" else 403)


@pytest.mark.parametrize("who", ROLES)
def test_only_platform_admin_creates_teams(world, who):
    r = world["client"].post("/admin/teams", json={"name": f"t-{who.replace('_', '-')}"}, headers=as_(world, who))
    assert r.status_code == (201 if who == "platform_admin" else 403)
    if r.status_code == 403:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("who,expected", [("platform_admin", "all"), ("team_admin", ["radiology"]),
                                          ("other_team_admin", ["cardiology"]), ("user", 403), ("auditor", 403)])
def test_list_teams(world, who, expected):
    r = world["client"].get("/admin/teams", headers=as_(world, who))
    if expected == 403:
        assert r.status_code == 403
        return
    names = [t["name"] for t in r.json()["data"]]
    if expected == "all":
        assert {"platform", "radiology", "cardiology"} <= set(names)
    else:
        assert names == expected


@pytest.mark.parametrize("who,status", [("platform_admin", 201), ("team_admin", 201), ("other_team_admin", 403), ("user", 403), ("auditor", 403)])
def test_create_key_in_radiology(world, who, status):
    r = world["client"].post("/admin/teams/radiology/keys", json={"role": "user", "description": who}, headers=as_(world, who))
    assert r.status_code == status, r.text


@pytest.mark.parametrize("role,status", [("user", 201), ("team_admin", 201), ("platform_admin", 403), ("auditor", 403)])
def test_team_admin_grants_only_team_roles(world, role, status):
    r = world["client"].post("/admin/teams/radiology/keys", json={"role": role}, headers=as_(world, "team_admin"))
    assert r.status_code == status


# Separation of duties: who may mint a key of each role in radiology (201) and who may not (403).
GRANTS = {
    "platform_admin": {"user", "team_admin", "platform_admin"},
    "team_admin": {"user", "team_admin"},
    "other_team_admin": set(),
    "user": set(),
    "auditor": set(),
    "security_officer": {"auditor"},
}


@pytest.mark.parametrize("who", ROLES)
@pytest.mark.parametrize("role", ["user", "team_admin", "platform_admin", "auditor", "security_officer"])
def test_who_may_grant_which_role(world, who, role):
    r = world["client"].post("/admin/teams/radiology/keys", json={"role": role}, headers=as_(world, who))
    assert r.status_code == (201 if role in GRANTS[who] else 403), r.text
    changes = [c for c in world["seam"].changes if c["action"] == "key.create" and c["after"]["role"] == role]
    if r.status_code == 201:
        assert changes and changes[-1]["after"]["id"] == r.json()["id"]
    if role in ("auditor", "security_officer") and who in ("platform_admin", "team_admin"):
        assert r.json()["error"]["code"] == "separation_of_duties"


# A team admin administers its team's user and team_admin keys only; a platform admin may revoke any key
# (removing access grants nothing, and the revocation is in the log).
@pytest.mark.parametrize("who,status", [("platform_admin", 200), ("team_admin", 404), ("other_team_admin", 404), ("user", 403),
                                        ("auditor", 403), ("security_officer", 200)])
def test_revoke_an_auditor_key(world, who, status):
    record, _ = world["keys"].create("radiology", Role.AUDITOR)
    r = world["client"].delete(f"/admin/keys/{record.id}", headers=as_(world, who))
    assert r.status_code == status
    assert (world["keys"].get(record.id).revoked_at is not None) == (status == 200)


@pytest.mark.parametrize("who,status", [("platform_admin", 200), ("team_admin", 200), ("other_team_admin", 403), ("user", 403), ("auditor", 403)])
def test_list_radiology_keys(world, who, status):
    r = world["client"].get("/admin/teams/radiology/keys", headers=as_(world, who))
    assert r.status_code == status
    if status == 200:
        rows = r.json()["data"]
        assert rows and all(row["team"] == "radiology" for row in rows)
        assert all("key" not in row and "secret_hash" not in row for row in rows)


@pytest.mark.parametrize("who,status", [("platform_admin", 200), ("team_admin", 200), ("other_team_admin", 404), ("user", 403), ("auditor", 403),
                                        ("security_officer", 404)])
def test_revoke_a_radiology_key(world, who, status):
    record, _ = world["keys"].create("radiology", Role.USER)
    r = world["client"].delete(f"/admin/keys/{record.id}", headers=as_(world, who))
    assert r.status_code == status
    assert (world["keys"].get(record.id).revoked_at is not None) == (status == 200)


def test_created_key_is_shown_once_works_and_dies_on_revocation(world):
    client = world["client"]
    created = client.post("/admin/teams", json={"name": "oncology", "display_name": "Oncology"}, headers=as_(world, "platform_admin"))
    assert created.status_code == 201
    made = client.post("/admin/teams/oncology/keys", json={"role": "user", "expires_at": "2099-01-01T00:00:00Z"}, headers=as_(world, "platform_admin"))
    assert made.status_code == 201
    key, key_id = made.json()["key"], made.json()["id"]
    listed = client.get("/admin/teams/oncology/keys", headers=as_(world, "platform_admin")).json()["data"]
    assert [row["id"] for row in listed] == [key_id] and key not in str(listed)
    ok = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200 and ok.json()["team"] == "oncology"
    assert client.delete(f"/admin/keys/{key_id}", headers=as_(world, "platform_admin")).status_code == 200
    gone = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"})
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "revoked_api_key"


def test_admin_changes_reach_the_audit_seam_without_secrets(world):
    client, seam = world["client"], world["seam"]
    seam.changes.clear()
    client.post("/admin/teams", json={"name": "neurology"}, headers=as_(world, "platform_admin"))
    made = client.post("/admin/teams/neurology/keys", json={"role": "team_admin"}, headers=as_(world, "platform_admin")).json()
    client.delete(f"/admin/keys/{made['id']}", headers=as_(world, "platform_admin"))
    assert [(c["action"], c["target"], c["who"]) for c in seam.changes] == [
        ("team.create", "team:neurology", "bootstrap-admin"),
        ("key.create", f"key:{made['id']}", "bootstrap-admin"),
        ("key.revoke", f"key:{made['id']}", "bootstrap-admin"),
    ]
    create_team, create_key, revoke = seam.changes
    assert create_team["before"] is None and create_team["after"]["name"] == "neurology"
    assert create_key["after"]["role"] == "team_admin" and create_key["after"]["team"] == "neurology"
    assert revoke["before"]["revoked_at"] is None and revoke["after"]["revoked_at"] is not None
    secret = made["key"].split(".", 1)[1]
    assert secret not in repr(seam.changes) and "secret_hash" not in repr(seam.changes)


def test_rejected_admin_calls_change_nothing(world):
    seam = world["seam"]
    seam.changes.clear()
    world["client"].post("/admin/teams", json={"name": "sneaky"}, headers=as_(world, "team_admin"))
    world["client"].post("/admin/teams/radiology/keys", json={"role": "platform_admin"}, headers=as_(world, "team_admin"))
    assert seam.changes == []


@pytest.mark.parametrize("method,path,body,status,code", [
    ("post", "/admin/teams", {"name": "radiology"}, 409, "team_exists"),
    ("post", "/admin/teams", {"name": "Bad Name!"}, 400, "invalid_value"),
    ("post", "/admin/teams/nowhere/keys", {"role": "user"}, 404, "not_found"),
    ("get", "/admin/teams/nowhere/keys", None, 404, "not_found"),
    ("delete", "/admin/keys/ffffffffffffffff", None, 404, "not_found"),
    ("post", "/admin/teams/radiology/keys", {"expires_at": "2001-01-01T00:00:00Z"}, 400, "invalid_value"),
    # times with no UTC equivalent (before year 1, after 9999)
    ("post", "/admin/teams/radiology/keys", {"expires_at": "0001-01-01T00:00:00+05:00"}, 400, "invalid_value"),
    ("post", "/admin/teams/radiology/keys", {"expires_at": "9999-12-31T23:00:00-05:00"}, 400, "invalid_value"),
])
def test_admin_errors_in_openai_shape(world, method, path, body, status, code):
    kwargs = {"json": body} if body is not None else {}
    r = getattr(world["client"], method)(path, headers=as_(world, "platform_admin"), **kwargs)
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_admin_routes_need_credentials(world):
    r = world["client"].get("/admin/teams")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path,body", [
    ("/admin/teams", {"name": "hepatology", "display_name": "Hepatology\x1b]0;owned\x07"}),
    ("/admin/teams/radiology/keys", {"role": "user", "description": "line one\r\nline two"}),
])
def test_free_text_with_control_characters_is_refused(world, path, body):
    r = world["client"].post(path, json=body, headers=as_(world, "platform_admin"))
    assert r.status_code == 400 and "control character" in r.json()["error"]["message"]
