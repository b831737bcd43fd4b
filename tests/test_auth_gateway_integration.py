"""The identity layer plugged into the real gateway app (create_app with Ward's authenticator and the
admin router), routing to a fake worker over gRPC."""
from __future__ import annotations

import pytest
from fake_worker import FakeConfig, FakeWorker, running_gateway

from auth_support import sqlite_url
from gateway.auth.factory import build_identity
from gateway.auth.principal import Role
from gateway.auth.settings import AuthSettings
from gateway.auth.stores import KeyStore, TeamStore
from gateway.db import create_db_engine

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
ADMIN_KEY = "integration-admin-key-0123456789abcdef"
PROMPT = [{"role": "user", "content": "a long shared clinical prompt " * 20}]


@pytest.fixture
async def gw(tmp_path):
    engine = create_db_engine(sqlite_url(tmp_path))
    for team in ("radiology", "cardiology"):
        TeamStore(engine).create(team)
    keys = {team: KeyStore(engine).create(team, Role.USER)[1] for team in ("radiology", "cardiology")}
    identity = build_identity(AuthSettings(admin_key=ADMIN_KEY, api_key_cache_ttl_s=0), engine)
    async with FakeWorker(FakeConfig(model=MODEL)) as worker, running_gateway(
        {MODEL: [worker]}, authenticator=identity.authenticator, routers=identity.routers
    ) as harness:
        harness.worker = worker
        harness.keys = keys
        yield harness
    engine.dispose()


def bearer(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


async def test_each_team_sends_its_own_prefix_cache_salt(gw):
    for team in ("radiology", "cardiology", "radiology"):
        r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": PROMPT, "max_tokens": 2},
                                 headers=bearer(gw.keys[team]))
        assert r.status_code == 200, r.text
    salts = [req.cache_salt for req in gw.worker.servicer.generate_requests]
    assert len(salts) == 3 and salts[0] == salts[2] and salts[0] != salts[1]
    assert all(salts)


async def test_unknown_key_is_refused_by_the_gateway(gw):
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": PROMPT},
                             headers=bearer("ward-0123456789abcdef." + "z" * 43))
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert gw.worker.servicer.generate_requests == []


async def test_admin_router_works_inside_the_gateway_app(gw):
    made = await gw.client.post("/admin/teams/radiology/keys", json={"role": "user"}, headers=bearer(ADMIN_KEY))
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    ok = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": PROMPT, "max_tokens": 1}, headers=bearer(key))
    assert ok.status_code == 200
    assert (await gw.client.delete(f"/admin/keys/{key_id}", headers=bearer(ADMIN_KEY))).status_code == 200
    gone = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": PROMPT}, headers=bearer(key))
    assert gone.status_code == 401
    user = await gw.client.get("/admin/teams", headers=bearer(gw.keys["radiology"]))
    assert user.status_code == 403


async def test_a_static_key_of_the_config_file_stops_working_when_its_team_is_disabled(tmp_path):
    """`ward teams disable` cuts a team off for the config file's static api_keys too, as for its other keys."""
    import httpx
    from governance_support import database, fake_workers

    from gateway.cli import build_app
    from gateway.settings import GatewaySettings

    static = "static-key-of-the-laboratory-0123456789"
    with database("sqlite", tmp_path) as url:
        async with fake_workers() as workers:
            settings = GatewaySettings(database_url=url, data_dir=tmp_path, api_keys={static: "laboratory"},
                                       auth={"team_cache_ttl_s": 0},
                                       models={name: {"workers": [w.address]} for name, w in workers.items()})
            app = build_app(settings)
            async with app.router.lifespan_context(app):
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
                    assert (await client.get("/v1/models", headers=bearer(static))).status_code == 200
                    TeamStore(app.state.database).set_disabled("laboratory", True)
                    refused = await client.get("/v1/models", headers=bearer(static))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "team_disabled"
