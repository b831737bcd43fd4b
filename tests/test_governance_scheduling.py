"""A team's priority class and weight are admin policy: set in the quota file, through
/admin/teams/{team}/scheduling or `ward quotas`, validated, audited, surviving restarts, and carried on
every Generate call as ``team`` / ``team_priority`` / ``team_weight``; the client's ``priority`` only
orders requests within its team, and a team admin cannot raise its own team's class or weight."""
from __future__ import annotations

import json

import anyio
import pytest
from pydantic import ValidationError

from gateway.auth.principal import Role
from gateway.quota.config import diff_scheduling
from gateway.quota.config_file import QuotaConfigError, QuotaConfigFile, parse_quota_config
from gateway.quota.limits import TEAM_SCOPE
from gateway.quota.scheduling import SchedulingOverride, TeamScheduling
from governance_support import (
    ADMIN_KEY,
    CHAT_MODEL,
    admin_entries,
    bearer,
    chat,
    database,
    fake_workers,
    governed_gateway,
    make_team,
    records_of,
    unique_team,
)

pytestmark = pytest.mark.anyio


# ---- the quota file ------------------------------------------------------------------------------

def test_the_file_layers_team_values_over_defaults_over_the_built_in_class_and_weight():
    config = parse_quota_config(
        "defaults: {requests_per_minute: 10, priority: 2}\n"
        "teams:\n  icu: {priority: -5, weight: 4}\n  lab: {weight: 0.5}\n  pharmacy: {limits: {tokens_per_day: 9}}\n"
    )
    views = {team: config.scheduling_for(team) for team in ("icu", "lab", "pharmacy", "unlisted")}
    assert views["icu"].scheduling == TeamScheduling(priority=-5, weight=4.0)
    assert (views["icu"].priority_source, views["icu"].weight_source) == ("file", "file")
    assert views["lab"].scheduling == TeamScheduling(priority=2, weight=0.5)
    assert (views["lab"].priority_source, views["lab"].weight_source) == ("default", "file")
    assert views["unlisted"].scheduling == TeamScheduling(priority=2, weight=1.0)
    assert (views["unlisted"].priority_source, views["unlisted"].weight_source) == ("default", "none")
    # the scheduling fields of `defaults` are not limits: the team scope's limits are unchanged
    assert config.limits_for("pharmacy", TEAM_SCOPE)[0].model_dump() == {
        "requests_per_minute": 10, "tokens_per_minute": None, "max_concurrent": None, "tokens_per_day": 9,
        "tokens_per_month": None}


def test_an_admin_value_replaces_the_files_field_by_field():
    config = parse_quota_config("teams: {icu: {priority: -5, weight: 4}}")
    view = config.scheduling_for("icu", SchedulingOverride(weight=0.25))
    assert view.scheduling == TeamScheduling(priority=-5, weight=0.25)
    assert (view.priority_source, view.weight_source) == ("file", "admin")


@pytest.mark.parametrize("text,problem", [
    ("defaults: {priority: 11}", "defaults.priority"),
    ("defaults: {priority: -11}", "defaults.priority"),
    ("teams: {icu: {priority: 1.5}}", "teams.icu.priority"),
    ("teams: {icu: {priority: '1'}}", "teams.icu.priority"),
    ("teams: {icu: {priority: true}}", "teams.icu.priority"),
    ("teams: {icu: {weight: 0}}", "teams.icu.weight"),
    ("teams: {icu: {weight: 0.001}}", "teams.icu.weight"),
    ("teams: {icu: {weight: 101}}", "teams.icu.weight"),
    ("teams: {icu: {weight: .inf}}", "teams.icu.weight"),
    ("teams: {icu: {weight: .nan}}", "teams.icu.weight"),
    ("teams: {icu: {weight: false}}", "teams.icu.weight"),
    ("teams: {icu: {limits: {priority: 1}}}", "teams.icu.limits.priority"),
])
def test_a_bad_class_or_weight_in_the_file_is_refused_naming_the_field(text, problem):
    with pytest.raises(QuotaConfigError) as refused:
        parse_quota_config(text)
    assert f"  {problem}:" in str(refused.value)


def test_a_reload_with_a_bad_weight_is_refused_and_the_old_policy_stays(tmp_path):
    path = tmp_path / "quotas.yaml"
    path.write_text("teams: {icu: {priority: -3, weight: 2}}\n")
    source = QuotaConfigFile(path, check_interval_s=0)
    path.write_text("teams: {icu: {priority: -3, weight: -1}}\n")
    assert source.reload_if_changed() is False
    assert "teams.icu.weight" in source.last_error
    assert source.current().scheduling_for("icu").scheduling == TeamScheduling(priority=-3, weight=2.0)


def test_a_changed_file_reports_each_teams_scheduling_change_and_the_defaults_once():
    old = parse_quota_config("defaults: {weight: 1}\nteams: {icu: {priority: -1}, lab: {weight: 2}}")
    new = parse_quota_config("defaults: {weight: 3}\nteams: {icu: {priority: -1}, lab: {weight: 2}}")
    assert diff_scheduling(old, new) == [
        ("*", TeamScheduling(priority=0, weight=1.0), TeamScheduling(priority=0, weight=3.0)),
        ("icu", TeamScheduling(priority=-1, weight=1.0), TeamScheduling(priority=-1, weight=3.0)),
    ]


@pytest.mark.parametrize("body", [{"priority": 1.0}, {"priority": "1"}, {"weight": True}, {"weight": 0}, {"nice": 1}])
def test_the_admin_body_is_as_strict_as_the_file(body):
    with pytest.raises(ValidationError):
        SchedulingOverride.model_validate_json(json.dumps(body))


# ---- through the gateway -------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def db(request, tmp_path_factory):
    """A database and the data directory of the gateways on it (the audit log's signing key)."""
    with database(request.param, tmp_path_factory.mktemp("scheduling-db")) as url:
        yield url, tmp_path_factory.mktemp("scheduling-data")


@pytest.fixture
async def gw(db, tmp_path):
    url, data_dir = db
    quota_file = tmp_path / "quotas.yaml"
    quota_file.write_text("defaults: {priority: 3, weight: 0.5}\n")
    async with fake_workers() as workers, governed_gateway(url, data_dir, workers, quota_file=quota_file) as gateway:
        gateway.quota_file = quota_file
        yield gateway


async def test_every_generate_call_carries_the_team_its_policy_and_the_clients_own_priority(gw):
    team = unique_team("icu")
    keys = make_team(gw.url, team, Role.USER)
    answered = await gw.client.post("/v1/chat/completions", json=chat(priority=7), headers=bearer(keys["user"]))
    completion = await gw.client.post("/v1/completions", json={"model": CHAT_MODEL, "prompt": ["a", "b"], "max_tokens": 2},
                                      headers=bearer(keys["user"]))
    assert answered.status_code == 200 and completion.status_code == 200, completion.text
    sent = gw.sent()[-3:]
    assert [(r.team, r.team_priority, r.team_weight) for r in sent] == [(team, 3, 0.5)] * 3  # the file's defaults
    assert [r.priority for r in sent] == [7, 0, 0]  # the client's own field still travels, unchanged
    assert all(r.cache_salt == f"team:{team}" for r in sent)

    changed = await gw.client.put(f"/admin/teams/{team}/scheduling", json={"priority": -4, "weight": 8},
                                  headers=bearer(ADMIN_KEY))
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"object": "team.scheduling", "team": team, "priority": -4, "weight": 8.0,
                              "source": {"priority": "admin", "weight": "admin"}}
    await gw.client.post("/v1/chat/completions", json=chat(), headers=bearer(keys["user"]))
    assert (gw.sent()[-1].team_priority, gw.sent()[-1].team_weight) == (-4, 8.0)


async def test_get_answers_what_put_set_and_delete_returns_to_the_file(gw):
    team = unique_team("lab")
    make_team(gw.url, team)
    put = await gw.client.put(f"/admin/teams/{team}/scheduling", json={"weight": 2.5}, headers=bearer(ADMIN_KEY))
    got = await gw.client.get(f"/admin/teams/{team}/scheduling", headers=bearer(ADMIN_KEY))
    assert put.json() == got.json() == {"object": "team.scheduling", "team": team, "priority": 3, "weight": 2.5,
                                         "source": {"priority": "default", "weight": "admin"}}
    cleared = await gw.client.delete(f"/admin/teams/{team}/scheduling", headers=bearer(ADMIN_KEY))
    assert cleared.json()["weight"] == 0.5 and cleared.json()["source"] == {"priority": "default", "weight": "default"}


@pytest.mark.parametrize("body", [{"priority": 11}, {"priority": 1.5}, {"weight": 0}, {"weight": "2"}, {"weight": 1e9},
                                  {"priority": True}, {"speed": 1}])
async def test_bad_values_are_400_in_openais_shape_and_change_nothing(gw, body):
    team = unique_team("bad")
    make_team(gw.url, team)
    refused = await gw.client.put(f"/admin/teams/{team}/scheduling", json=body, headers=bearer(ADMIN_KEY))
    assert refused.status_code == 400, refused.text
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    assert refused.json()["error"]["code"] == "invalid_value"
    assert (await gw.client.get(f"/admin/teams/{team}/scheduling", headers=bearer(ADMIN_KEY))).json()["priority"] == 3


async def test_a_team_admin_can_read_but_not_raise_its_own_teams_class_or_weight(gw):
    team = unique_team("ward")
    keys = make_team(gw.url, team, Role.TEAM_ADMIN, Role.USER)
    own = bearer(keys["team_admin"])
    assert (await gw.client.get(f"/admin/teams/{team}/scheduling", headers=own)).status_code == 200
    for method, body in (("PUT", {"priority": -10, "weight": 100}), ("DELETE", None)):
        refused = await gw.client.request(method, f"/admin/teams/{team}/scheduling", json=body, headers=own)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
        [record] = records_of(gw.url, refused.headers["x-request-id"])
        assert record["kind"] == "request" and record["http_status"] == 403
    user = await gw.client.put(f"/admin/teams/{team}/scheduling", json={"priority": -10}, headers=bearer(keys["user"]))
    assert user.status_code == 403
    other = await gw.client.get(f"/admin/teams/{team}/scheduling", headers=bearer(make_team(gw.url, unique_team(), Role.TEAM_ADMIN)["team_admin"]))
    assert other.status_code == 403
    await gw.client.post("/v1/chat/completions", json=chat(), headers=bearer(keys["user"]))
    assert (gw.sent()[-1].team_priority, gw.sent()[-1].team_weight) == (3, 0.5)  # unchanged


async def test_a_change_is_audited_with_the_request_id_the_admin_got(gw):
    team = unique_team("onc")
    make_team(gw.url, team)
    changed = await gw.client.put(f"/admin/teams/{team}/scheduling", json={"priority": -2}, headers=bearer(ADMIN_KEY))
    cleared = await gw.client.delete(f"/admin/teams/{team}/scheduling", headers=bearer(ADMIN_KEY))
    entries = admin_entries(gw.url, team=team)
    assert [(e["data"]["action"], e["request_id"]) for e in entries] == [
        ("scheduling.set", changed.headers["x-request-id"]), ("scheduling.clear", cleared.headers["x-request-id"])]
    assert entries[0]["data"]["before"] == {"scheduling": {"priority": 3, "weight": 0.5}}
    assert entries[0]["data"]["after"] == {"scheduling": {"priority": -2, "weight": 0.5}, "source": "admin_api"}
    assert entries[0]["data"]["actor"]["roles"] == ["platform_admin", "team_admin", "user"]


async def test_an_unknown_team_is_404_and_nothing_is_written(gw):
    missing = unique_team("ghost")
    for method in ("GET", "PUT", "DELETE"):
        answer = await gw.client.request(method, f"/admin/teams/{missing}/scheduling", json={"priority": 1} if method == "PUT" else None,
                                         headers=bearer(ADMIN_KEY))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", answer.text
    assert admin_entries(gw.url, team=missing) == []


async def test_a_reload_of_the_file_changes_the_policy_in_force_and_is_audited(gw):
    team = unique_team("neuro")
    keys = make_team(gw.url, team, Role.USER)
    gw.quota_file.write_text(f"defaults: {{priority: 3, weight: 0.5}}\nteams: {{{team}: {{priority: 9}}}}\n")

    async def in_force() -> int:
        await gw.client.post("/v1/chat/completions", json=chat(), headers=bearer(keys["user"]))
        return gw.sent()[-1].team_priority

    with anyio.fail_after(10):
        while await in_force() != 9:
            await anyio.sleep(0.05)
    with anyio.fail_after(10):
        while not admin_entries(gw.url, team=team, action="scheduling.file_reload"):
            await anyio.sleep(0.05)
    [reload] = admin_entries(gw.url, team=team, action="scheduling.file_reload")
    assert reload["data"]["before"]["scheduling"]["priority"] == 3 and reload["data"]["after"]["scheduling"]["priority"] == 9


async def test_admin_set_scheduling_survives_a_restart(db):
    url, data_dir = db
    team = unique_team("er")
    keys = make_team(url, team, Role.USER)
    async with fake_workers() as workers:
        async with governed_gateway(url, data_dir, workers) as first:
            assert (await first.client.put(f"/admin/teams/{team}/scheduling", json={"priority": -7, "weight": 6},
                                           headers=bearer(ADMIN_KEY))).status_code == 200
        async with governed_gateway(url, data_dir, workers) as second:
            await second.client.post("/v1/chat/completions", json=chat(), headers=bearer(keys["user"]))
            assert (second.sent()[-1].team_priority, second.sent()[-1].team_weight) == (-7, 6.0)


async def test_a_change_in_the_database_by_another_gateway_is_in_force_here_within_the_refresh(gw):
    from gateway.db import create_db_engine
    from gateway.quota.scheduling_store import SchedulingStore

    team = unique_team("peds")
    keys = make_team(gw.url, team, Role.USER)
    engine = create_db_engine(gw.url)
    try:
        SchedulingStore(engine).put(team, SchedulingOverride(priority=-9), by="another gateway")
    finally:
        engine.dispose()
    with anyio.fail_after(5):
        while True:
            await gw.client.post("/v1/chat/completions", json=chat(), headers=bearer(keys["user"]))
            if gw.sent()[-1].team_priority == -9:
                break
            await anyio.sleep(0.05)


async def test_an_unaudited_change_does_not_stay_in_force(gw):
    from gateway.audit.errors import AuditUnavailable

    team = unique_team("derm")
    make_team(gw.url, team)
    quotas = gw.app.state.quotas

    class FailingSink:
        async def record_scheduling_change(self, change) -> None:
            raise AuditUnavailable("database down")

    quotas._audit, working = FailingSink(), quotas._audit
    try:
        with pytest.raises(AuditUnavailable):
            await quotas.set_scheduling(team, SchedulingOverride(priority=-10), actor="admin")
    finally:
        quotas._audit = working
    assert quotas.scheduling(team) == TeamScheduling(priority=3, weight=0.5)
    assert (await quotas.team_scheduling(team)).priority_source == "default"
