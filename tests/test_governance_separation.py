"""Separation of duties in the served gateway: a platform admin cannot obtain prompt content by any path
(granting itself or anyone an oversight role, through a team admin it creates, or reading the log or the
admin API), auditor keys come only from a security officer or the gateway host, and every admin and
auditor read is audited and answered with an ``x-request-id``."""
from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest

from gateway.audit.canonical import canonical_json
from gateway.auth.principal import PLATFORM_TEAM, Role
from governance_support import (
    ADMIN_KEY,
    audit_records,
    bearer,
    chat,
    database,
    fake_workers,
    governed_gateway,
    make_team,
    records_of,
    unique_team,
    ward_here,
)

pytestmark = pytest.mark.anyio

SECRET_PROMPT = "Patient 4471 in bed 12 tested positive for HIV; tell the family."


@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def db(request, tmp_path_factory):
    with database(request.param, tmp_path_factory.mktemp("separation-db")) as url:
        yield url, tmp_path_factory.mktemp("separation-data")


@pytest.fixture
async def gw(db):
    async with fake_workers() as workers, governed_gateway(*db, workers) as gateway:
        yield gateway


def admin() -> dict:
    return bearer(ADMIN_KEY)


async def test_no_administrator_can_grant_an_oversight_role_through_the_api(gw):
    team = unique_team("radiology")
    keys = make_team(gw.url, team, Role.TEAM_ADMIN, Role.PLATFORM_ADMIN)
    granters = {"bootstrap admin": ADMIN_KEY, "platform admin key": keys["platform_admin"], "team admin": keys["team_admin"]}
    for who, key in granters.items():
        for target in (PLATFORM_TEAM, team):
            for role in ("auditor", "security_officer"):
                refused = await gw.client.post(f"/admin/teams/{target}/keys", json={"role": role}, headers=bearer(key))
                assert refused.status_code == 403, (who, target, role, refused.text)
                assert refused.json()["error"]["code"] in ("separation_of_duties", "permission_denied")
                [record] = records_of(gw.url, refused.headers["x-request-id"])  # the attempt is evidence
                assert record["status"] == "rejected" and record["http_status"] == 403
    listed = await gw.client.get(f"/admin/teams/{PLATFORM_TEAM}/keys", headers=admin())
    assert not {k["role"] for k in listed.json()["data"]} & {"auditor", "security_officer"}


async def test_a_security_officer_grants_auditors_and_nothing_else(gw):
    officer = make_team(gw.url, PLATFORM_TEAM, Role.SECURITY_OFFICER)["security_officer"]
    so = bearer(officer)
    granted = await gw.client.post(f"/admin/teams/{PLATFORM_TEAM}/keys", json={"role": "auditor", "description": "Q4 review"}, headers=so)
    assert granted.status_code == 201, granted.text
    auditor = bearer(granted.json()["key"])
    assert (await gw.client.get("/audit/records", headers=auditor)).status_code == 200
    for role in ("security_officer", "platform_admin", "team_admin", "user"):
        refused = await gw.client.post(f"/admin/teams/{PLATFORM_TEAM}/keys", json={"role": role}, headers=so)
        assert refused.status_code == 403, role
    # no reading, no inference, no administration of its own
    assert (await gw.client.get("/audit/records", headers=so)).status_code == 403
    assert (await gw.client.post("/v1/chat/completions", json=chat(), headers=so)).status_code == 403
    assert (await gw.client.post("/admin/teams", json={"name": unique_team()}, headers=so)).status_code == 403
    assert (await gw.client.put(f"/admin/teams/{PLATFORM_TEAM}/quotas", json={}, headers=so)).status_code == 403
    # it sees and revokes the auditor keys only
    seen = (await gw.client.get(f"/admin/teams/{PLATFORM_TEAM}/keys", headers=so)).json()["data"]
    assert seen and {k["role"] for k in seen} == {"auditor"}
    user_key = make_team(gw.url, PLATFORM_TEAM, Role.USER)["user"]
    user_id = user_key.split(".")[0].removeprefix("ward-")
    assert (await gw.client.delete(f"/admin/keys/{user_id}", headers=so)).status_code == 404
    assert (await gw.client.delete(f"/admin/keys/{granted.json()['id']}", headers=so)).status_code == 200
    assert (await gw.client.get("/audit/records", headers=auditor)).status_code == 401
    [grant] = [e for e in audit_records(gw.url, kind="admin") if e["data"]["target"] == f"key:{granted.json()['id']}"
               and e["data"]["action"] == "key.create"]
    assert grant["data"]["actor"]["roles"] == ["security_officer"] and grant["request_id"] == granted.headers["x-request-id"]


async def test_a_team_admin_made_by_a_platform_admin_cannot_grant_an_auditor_either(gw):
    team = unique_team("cardiology")
    make_team(gw.url, team)
    made = await gw.client.post(f"/admin/teams/{team}/keys", json={"role": "team_admin"}, headers=admin())
    assert made.status_code == 201
    deputy = bearer(made.json()["key"])
    for role in ("auditor", "security_officer", "platform_admin"):
        assert (await gw.client.post(f"/admin/teams/{team}/keys", json={"role": role}, headers=deputy)).status_code == 403
    own = await gw.client.get("/audit/records", headers=deputy)  # metadata of its own team, nothing more
    assert own.status_code == 200 and {r["team"] for r in own.json()["data"]} <= {team}


def _forbidden_texts(prompt: str, answer: str) -> list[str]:
    """What must never reach a reader without the content right: the texts and their digests."""
    messages = [{"role": "user", "content": prompt}]
    return [prompt, answer, hashlib.sha256(canonical_json(messages).encode()).hexdigest(),
            hashlib.sha256(canonical_json(answer).encode()).hexdigest(), "HIV"]


async def test_a_platform_admin_reads_no_prompt_content_by_any_read_path(gw):
    team = unique_team("infectious")
    keys = make_team(gw.url, team, Role.USER, Role.TEAM_ADMIN)
    answered = await gw.client.post("/v1/chat/completions", json=chat(content=SECRET_PROMPT), headers=bearer(keys["user"]))
    assert answered.status_code == 200
    answer = answered.json()["choices"][0]["message"]["content"]
    request_id = answered.headers["x-request-id"]
    [stored] = [r for r in audit_records(gw.url, kind="request") if r["id"] == request_id]
    assert stored["prompt"][0]["content"] == SECRET_PROMPT  # the log holds it: the auditor's to read

    paths = [
        "/audit/records", "/audit/records?kind=request", f"/audit/records?team={team}", f"/audit/records/{request_id}",
        "/audit/export?format=jsonl", "/audit/export?format=csv", f"/audit/export?format=jsonl&team={team}",
        "/admin/teams", f"/admin/teams/{team}/keys", f"/admin/teams/{team}/quotas", f"/admin/teams/{team}/usage",
        f"/admin/teams/{team}/usage?group_by=model", f"/admin/teams/{team}/scheduling", f"/admin/teams/{team}/models",
        "/admin/models", "/admin/usage/series", f"/admin/usage/series?team={team}&bucket=day",
    ]
    for reader in (admin(), bearer(keys["team_admin"])):
        for path in paths:
            response = await gw.client.get(path, headers=reader)
            assert response.status_code in (200, 403), (path, response.text)
            for text in _forbidden_texts(SECRET_PROMPT, answer):
                assert text not in response.text, (path, text)
    metadata = (await gw.client.get(f"/audit/records/{request_id}", headers=admin())).json()
    assert metadata["team"] == team and metadata["status"] == "ok" and metadata["prompt_tokens"]  # metadata still there
    rows = list(csv.DictReader(io.StringIO((await gw.client.get("/audit/export?format=csv", headers=admin())).text)))
    assert any(row["id"] == request_id for row in rows)


async def test_an_auditor_reads_the_content_and_the_read_is_recorded(gw):
    team = unique_team("oncology")
    keys = make_team(gw.url, team, Role.USER)
    auditor = bearer(make_team(gw.url, PLATFORM_TEAM, Role.AUDITOR)["auditor"])
    answered = await gw.client.post("/v1/chat/completions", json=chat(content=SECRET_PROMPT), headers=bearer(keys["user"]))
    record = await gw.client.get(f"/audit/records/{answered.headers['x-request-id']}", headers=auditor)
    assert record.json()["prompt"][0]["content"] == SECRET_PROMPT
    [read] = records_of(gw.url, record.headers["x-request-id"])
    assert read["kind"] == "access" and read["data"]["action"] == "get"
    assert read["data"]["record_ids"] == [answered.headers["x-request-id"]]


ADMIN_READS = ["/admin/teams", "/admin/teams/{team}/keys", "/admin/teams/{team}/quotas", "/admin/teams/{team}/usage",
               "/admin/teams/{team}/scheduling", "/admin/teams/{team}/models", "/admin/models", "/admin/usage/series"]


async def test_every_admin_read_carries_a_request_id_and_leaves_one_access_record(gw):
    team = unique_team("pathology")
    make_team(gw.url, team)
    for path in ADMIN_READS:
        response = await gw.client.get(path.format(team=team), headers=admin())
        assert response.status_code == 200, (path, response.text)
        [record] = records_of(gw.url, response.headers["x-request-id"])
        assert (record["kind"], record["status"], record["http_status"]) == ("access", "ok", 200)
        assert record["data"]["action"] == "admin.read"
        assert record["data"]["query"]["path"] == path.format(team=team)
        assert record["data"]["actor"]["subject"] == "bootstrap-admin"
    refused = await gw.client.get(f"/admin/teams/{team}/keys", headers=bearer(make_team(gw.url, team, Role.USER)["user"]))
    assert refused.status_code == 403 and len(records_of(gw.url, refused.headers["x-request-id"])) == 1
    missing = await gw.client.get(f"/admin/teams/{unique_team('ghost')}/keys", headers=admin())
    assert missing.status_code == 404
    [record] = records_of(gw.url, missing.headers["x-request-id"])
    assert record["http_status"] == 404


async def test_every_admin_and_audit_answer_carries_a_request_id(gw):
    team = unique_team("every")
    make_team(gw.url, team)
    auditor = bearer(make_team(gw.url, PLATFORM_TEAM, Role.AUDITOR)["auditor"])
    answers = [
        await gw.client.post("/admin/teams", json={"name": unique_team()}, headers=admin()),
        await gw.client.post("/admin/teams", json={"name": team}, headers=admin()),  # 409, answered by the route itself
        await gw.client.post(f"/admin/teams/{team}/keys", json={"role": "user"}, headers=admin()),
        await gw.client.put(f"/admin/teams/{team}/quotas", json={"requests_per_minute": 5}, headers=admin()),
        await gw.client.delete(f"/admin/teams/{team}/quotas", headers=admin()),
        await gw.client.get("/audit/records", headers=auditor),
        await gw.client.get("/audit/records?cursor=garbage", headers=auditor),
        await gw.client.get("/audit/export?format=csv", headers=auditor),
        await gw.client.get("/admin/teams"),
        await gw.client.get("/admin/nothing-here", headers=admin()),
    ]
    for response in answers:
        assert len(response.headers.get("x-request-id", "")) == 32, (response.request.url, response.status_code)
        assert records_of(gw.url, response.headers["x-request-id"]), (response.request.url, response.status_code)
    [exists] = records_of(gw.url, answers[1].headers["x-request-id"])  # the route's own 409
    assert (exists["kind"], exists["data"]["action"], exists["http_status"]) == ("access", "admin.attempt", 409)
    [bad_cursor] = records_of(gw.url, answers[6].headers["x-request-id"])
    assert (bad_cursor["data"]["action"], bad_cursor["http_status"]) == ("audit.read", 400)


async def test_an_admin_read_that_cannot_be_recorded_is_refused_with_503(gw):
    from gateway.audit.errors import AuditUnavailable

    log = gw.app.state.audit_services.log

    async def unavailable(*args, **kwargs):
        raise AuditUnavailable("database down")

    log.record_access = unavailable
    try:
        response = await gw.client.get("/admin/teams", headers=admin())
    finally:
        del log.record_access
    assert response.status_code == 503 and response.json()["error"]["code"] == "audit_unavailable"
    assert "platform" not in response.text and response.headers["x-request-id"]


# ---- the host: `ward keys` ------------------------------------------------------------------------

def test_the_cli_grants_oversight_roles_only_with_the_logs_signing_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("WARD_DATABASE_URL", raising=False)

    def ward(*args: str):
        return ward_here(capsys, *args)

    for role in ("auditor", "security_officer"):  # a fresh host: no log, no key
        refused = ward("keys", "create", "--team", "lab", "--role", role)
        assert refused.returncode == 2 and "signing key" in refused.stderr and not refused.stdout
    assert not (tmp_path / "audit" / "checkpoint-key.pem").exists()  # none was made to get past the check
    assert ward("teams", "create", "lab").returncode == 0  # the first recorded change makes the log's key
    made = ward("keys", "create", "--team", "lab", "--role", "auditor", "--json")
    assert made.returncode == 0, made.stderr
    key = tmp_path / "audit" / "checkpoint-key.pem"
    moved = key.rename(tmp_path / "elsewhere.pem")
    refused = ward("keys", "create", "--team", "lab", "--role", "security_officer")
    assert refused.returncode == 2 and not refused.stdout
    granted = ward("keys", "create", "--team", "lab", "--role", "security_officer", "--signing-key", str(moved), "--json")
    assert granted.returncode == 0, granted.stderr
    roles = [k["role"] for k in json.loads(ward("keys", "list", "--team", "lab", "--json").stdout)]
    assert sorted(roles) == ["auditor", "security_officer"]
