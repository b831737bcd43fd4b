"""The model approval policy: each model's status (approved, pilot, retired, or none: unreviewed) and
each team's allow-list decide what a team may use. /v1/models lists only that; a request for another
model is a 403 in OpenAI's shape (404 for /v1/models/{id}, as OpenAI answers for models a key cannot
see) and is audited; changes go through the admin API (platform admins only) and are audited."""
from __future__ import annotations

import anyio
import pytest

from gateway.auth.principal import Role
from gateway.policy.model_access import ModelStatus, decide
from governance_support import (
    ADMIN_KEY,
    CHAT_MODEL,
    EMBED_MODEL,
    PILOT_MODEL,
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

APPROVED, PILOT, RETIRED = ModelStatus.APPROVED, ModelStatus.PILOT, ModelStatus.RETIRED


# ---- the rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize("status,allow_list,allowed,reason", [
    (None, None, True, "unreviewed"),
    (APPROVED, None, True, "approved"),
    (PILOT, None, False, "pilot_not_listed"),
    (RETIRED, None, False, "retired"),
    (None, ["m"], True, "listed"),
    (APPROVED, ["m"], True, "listed"),
    (PILOT, ["m"], True, "listed"),
    (RETIRED, ["m"], False, "retired"),  # listing a retired model changes nothing
    (APPROVED, ["other"], False, "not_listed"),  # an allow-list is exact
    (None, ["other"], False, "not_listed"),
    (PILOT, ["other"], False, "pilot_not_listed"),
    (APPROVED, [], False, "not_listed"),  # an empty allow-list allows nothing
])
def test_the_rule(status, allow_list, allowed, reason):
    decision = decide("m", status, allow_list)
    assert (decision.allowed, decision.reason) == (allowed, reason)


# ---- through the gateway -------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"], scope="module")
def db(request, tmp_path_factory):
    with database(request.param, tmp_path_factory.mktemp("models-db")) as url:
        yield url, tmp_path_factory.mktemp("models-data")


@pytest.fixture(scope="module")
def statuses(db):
    """The models' statuses are global: set once for the module (fake-pilot in pilot)."""
    from gateway.db import create_db_engine
    from gateway.policy.store import ModelPolicyStore

    engine = create_db_engine(db[0])
    try:
        ModelPolicyStore(engine).put_status(PILOT_MODEL, PILOT, "trial 7", by="test")
    finally:
        engine.dispose()


@pytest.fixture
async def gw(db, statuses):
    async with fake_workers() as workers, governed_gateway(*db, workers) as gateway:
        yield gateway


def admin() -> dict:
    return bearer(ADMIN_KEY)


async def listed(gw, key: str) -> list[str]:
    answer = await gw.client.get("/v1/models", headers=bearer(key))
    assert answer.status_code == 200, answer.text
    return sorted(m["id"] for m in answer.json()["data"])


async def test_out_of_the_box_a_team_uses_every_served_model_but_a_pilot(gw):
    keys = make_team(gw.url, unique_team("default"), Role.USER)
    assert await listed(gw, keys["user"]) == [CHAT_MODEL, EMBED_MODEL]
    assert (await gw.client.post("/v1/chat/completions", json=chat(), headers=bearer(keys["user"]))).status_code == 200
    embedded = await gw.client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "chest pain"}, headers=bearer(keys["user"]))
    assert embedded.status_code == 200, embedded.text


async def test_a_model_outside_the_policy_is_403_on_every_inference_route_and_404_on_its_card(gw):
    team = unique_team("gp")
    keys = make_team(gw.url, team, Role.USER)
    requests = [
        ("/v1/chat/completions", chat(PILOT_MODEL)),
        ("/v1/completions", {"model": PILOT_MODEL, "prompt": "bed 4 is", "max_tokens": 2}),
        ("/v1/chat/completions", chat(PILOT_MODEL, stream=True)),
    ]
    for path, body in requests:
        refused = await gw.client.post(path, json=body, headers=bearer(keys["user"]))
        assert refused.status_code == 403, refused.text
        assert refused.json() == {"error": {"message": refused.json()["error"]["message"], "type": "invalid_request_error",
                                            "param": "model", "code": "model_not_allowed"}}
        [record] = records_of(gw.url, refused.headers["x-request-id"])
        assert (record["status"], record["http_status"], record["model"], record["team"]) == ("rejected", 403, PILOT_MODEL, team)
        assert record["error"]["code"] == "model_not_allowed"
    assert gw.sent(PILOT_MODEL) == []  # nothing reached the pilot's worker
    card = await gw.client.get(f"/v1/models/{PILOT_MODEL}", headers=bearer(keys["user"]))
    unknown = await gw.client.get("/v1/models/no-such-model", headers=bearer(keys["user"]))
    assert card.status_code == unknown.status_code == 404
    assert card.json()["error"]["message"] == unknown.json()["error"]["message"].replace("no-such-model", PILOT_MODEL)
    assert (await gw.client.get(f"/v1/models/{CHAT_MODEL}", headers=bearer(keys["user"]))).status_code == 200


async def test_a_pilot_team_lists_the_pilot_and_an_allow_list_is_exact(gw):
    team = unique_team("trial")
    keys = make_team(gw.url, team, Role.USER)
    put = await gw.client.put(f"/admin/teams/{team}/models", json={"allowed_models": [PILOT_MODEL, EMBED_MODEL]}, headers=admin())
    assert put.status_code == 200, put.text
    assert put.json() == {"object": "team.models", "team": team, "allowed_models": [EMBED_MODEL, PILOT_MODEL],
                          "usable_models": [EMBED_MODEL, PILOT_MODEL]}
    assert await listed(gw, keys["user"]) == [EMBED_MODEL, PILOT_MODEL]
    assert (await gw.client.post("/v1/chat/completions", json=chat(PILOT_MODEL), headers=bearer(keys["user"]))).status_code == 200
    assert gw.sent(PILOT_MODEL)[-1].team == team
    approved_but_unlisted = await gw.client.post("/v1/chat/completions", json=chat(CHAT_MODEL), headers=bearer(keys["user"]))
    assert approved_but_unlisted.status_code == 403 and approved_but_unlisted.json()["error"]["code"] == "model_not_allowed"


async def test_an_empty_allow_list_allows_nothing_and_delete_removes_the_list(gw):
    team = unique_team("closed")
    keys = make_team(gw.url, team, Role.USER)
    assert (await gw.client.put(f"/admin/teams/{team}/models", json={"allowed_models": []}, headers=admin())).status_code == 200
    assert await listed(gw, keys["user"]) == []
    assert (await gw.client.post("/v1/chat/completions", json=chat(), headers=bearer(keys["user"]))).status_code == 403
    reopened = await gw.client.delete(f"/admin/teams/{team}/models", headers=admin())
    assert reopened.json()["allowed_models"] is None
    assert await listed(gw, keys["user"]) == [CHAT_MODEL, EMBED_MODEL]


async def test_a_retired_model_is_refused_to_everyone_even_a_team_that_lists_it(gw):
    from gateway.db import create_db_engine
    from gateway.policy.store import ModelPolicyStore

    lister, other = unique_team("list"), unique_team("plain")
    keys = {team: make_team(gw.url, team, Role.USER)["user"] for team in (lister, other)}
    await gw.client.put(f"/admin/teams/{lister}/models", json={"allowed_models": [EMBED_MODEL]}, headers=admin())
    retired = await gw.client.put(f"/admin/models/{EMBED_MODEL}", json={"status": "retired", "note": "board 2026-12"},
                                  headers=admin())
    try:
        assert retired.status_code == 200 and retired.json()["status"] == "retired" and retired.json()["served"] is True
        for team, key in keys.items():
            refused = await gw.client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "x"}, headers=bearer(key))
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_retired", team
            assert EMBED_MODEL not in await listed(gw, key)
        assert gw.sent(EMBED_MODEL) == [] and gw.workers[EMBED_MODEL].servicer.embed_requests == []
    finally:
        engine = create_db_engine(gw.url)
        ModelPolicyStore(engine).put_status(EMBED_MODEL, None, "", by="test")  # the next tests use it again
        engine.dispose()
        await gw.app.state.ward.policy.models.refresh()


async def test_status_changes_and_allow_lists_are_audited_with_the_request_id(gw):
    team = unique_team("audited")
    make_team(gw.url, team)
    future = "llama-9-clinical/70b"  # no worker serves it yet: a status may still be recorded
    set_status = await gw.client.put(f"/admin/models/{future}", json={"status": "pilot", "note": "trial 9"}, headers=admin())
    assert set_status.status_code == 200 and set_status.json()["served"] is False
    listing = await gw.client.get("/admin/models", headers=admin())
    assert {m["model"]: m["status"] for m in listing.json()["data"]}[future] == "pilot"
    cleared = await gw.client.delete(f"/admin/models/{future}", headers=admin())
    assert cleared.json()["status"] == "unreviewed"
    allowed = await gw.client.put(f"/admin/teams/{team}/models", json={"allowed_models": [future]}, headers=admin())
    changes = [e for e in admin_entries(gw.url) if e["data"]["target"] in (f"model:{future}", f"team:{team}")]
    assert [(e["data"]["action"], e["request_id"]) for e in changes] == [
        ("model.status", set_status.headers["x-request-id"]),
        ("model.status_clear", cleared.headers["x-request-id"]),
        ("team.models", allowed.headers["x-request-id"]),
    ]
    assert changes[0]["data"]["before"] == {"status": "unreviewed", "note": ""}
    assert changes[0]["data"]["after"] == {"status": "pilot", "note": "trial 9"}
    assert changes[2]["data"]["before"] == {"allowed_models": None} and changes[2]["data"]["after"] == {"allowed_models": [future]}


async def test_only_platform_admins_change_the_policy_and_team_admins_read_their_own(gw):
    team = unique_team("ward")
    keys = make_team(gw.url, team, Role.TEAM_ADMIN, Role.USER)
    own = bearer(keys["team_admin"])
    attempts = [
        ("PUT", f"/admin/teams/{team}/models", {"allowed_models": [PILOT_MODEL]}),
        ("DELETE", f"/admin/teams/{team}/models", None),
        ("PUT", f"/admin/models/{PILOT_MODEL}", {"status": "approved"}),
        ("DELETE", f"/admin/models/{PILOT_MODEL}", None),
    ]
    for method, path, body in attempts:
        for key in (keys["team_admin"], keys["user"]):
            refused = await gw.client.request(method, path, json=body, headers=bearer(key))
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied", (method, path)
            assert records_of(gw.url, refused.headers["x-request-id"])[0]["http_status"] == 403
    assert (await gw.client.get(f"/admin/teams/{team}/models", headers=own)).status_code == 200
    assert (await gw.client.get("/admin/models", headers=own)).status_code == 200
    assert (await gw.client.get(f"/admin/teams/{team}/models", headers=bearer(keys["user"]))).status_code == 403
    assert (await gw.client.get("/admin/teams/radiology-x/models", headers=own)).status_code == 403
    assert PILOT_MODEL not in await listed(gw, keys["user"])


@pytest.mark.parametrize("path,body", [
    ("/admin/models/fake-chat", {"status": "banned"}),
    ("/admin/models/fake-chat", {"status": "approved", "note": "x" * 501}),
    ("/admin/models/fake-chat", {}),
    ("/admin/teams/{team}/models", {"allowed_models": "fake-chat"}),
    ("/admin/teams/{team}/models", {"allowed_models": [""]}),
    ("/admin/teams/{team}/models", {}),
])
async def test_bad_input_is_400_in_openais_shape(gw, path, body):
    team = unique_team("input")
    make_team(gw.url, team)
    refused = await gw.client.put(path.format(team=team), json=body, headers=admin())
    assert refused.status_code == 400, refused.text
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}


async def test_an_unknown_team_is_404(gw):
    answer = await gw.client.put(f"/admin/teams/{unique_team('ghost')}/models", json={"allowed_models": []}, headers=admin())
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


async def test_a_change_made_elsewhere_reaches_this_gateway_within_the_refresh(gw):
    from gateway.db import create_db_engine
    from gateway.policy.store import ModelPolicyStore

    team = unique_team("remote")
    keys = make_team(gw.url, team, Role.USER)
    engine = create_db_engine(gw.url)
    try:
        ModelPolicyStore(engine).put_allow_list(team, [EMBED_MODEL], by="another gateway")
    finally:
        engine.dispose()
    with anyio.fail_after(5):
        while await listed(gw, keys["user"]) != [EMBED_MODEL]:
            await anyio.sleep(0.05)
