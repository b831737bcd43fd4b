"""Admin endpoints: read and change a team's quotas, read its usage; who may do what; audit."""
from __future__ import annotations

import datetime as dt

import httpx2
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import AuthMethod, Principal, Role
from gateway.quota.admin_router import make_quota_admin_router
from gateway.quota.audit import ChangeSource, QuotaChange
from gateway.quota.config_file import StaticQuotaConfig, parse_quota_config
from gateway.quota.http import install_quota_error_handlers
from gateway.quota.limits import QuotaLimits, Scope, ScopeKind
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import QuotaSettings

pytestmark = pytest.mark.anyio

PRINCIPALS = {
    "root": Principal("root", "platform", frozenset({Role.PLATFORM_ADMIN}), AuthMethod.API_KEY),
    "ed-admin": Principal("ed-admin", "ed", frozenset({Role.TEAM_ADMIN}), AuthMethod.API_KEY),
    "ed-user": Principal("ed-user", "ed", frozenset({Role.USER}), AuthMethod.API_KEY),
    "rad-admin": Principal("rad-admin", "radiology", frozenset({Role.TEAM_ADMIN}), AuthMethod.API_KEY),
}
FILE = """
defaults: {requests_per_minute: 100}
teams:
  ed:
    limits: {max_concurrent: 8}
    keys: {batch: {requests_per_minute: 5}}
"""


class RecordingAudit:
    def __init__(self) -> None:
        self.changes: list[QuotaChange] = []

    async def record_quota_change(self, change: QuotaChange) -> None:
        self.changes.append(change)


@pytest.fixture
async def api():
    audit = RecordingAudit()
    quotas = QuotaService(InMemoryQuotaStore(), StaticQuotaConfig(parse_quota_config(FILE)), QuotaSettings(redis_url=None), audit=audit)

    def principal(request: Request) -> Principal:  # stands in for the gateway's authentication
        return PRINCIPALS[request.headers["x-test-principal"]]

    app = FastAPI()
    app.include_router(make_quota_admin_router(principal=principal, service=lambda: quotas))
    install_quota_error_handlers(app)

    @app.exception_handler(PermissionDenied)
    async def denied(_: Request, exc: PermissionDenied) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.message, "type": "permission_error", "param": None, "code": exc.code}}, 403)

    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://ward.test") as http:
        yield http, quotas, audit
    await quotas.aclose()


def as_(who: str) -> dict:
    return {"x-test-principal": who}


UNLIMITED = {k: None for k in QuotaLimits.model_fields}


async def test_get_shows_effective_limits_of_team_keys_and_models_with_their_source(api):
    http, _, _ = api
    response = await http.get("/admin/teams/ed/quotas", headers=as_("root"))
    assert response.status_code == 200
    assert response.json() == {
        "object": "team.quotas",
        "team": "ed",
        "limits": {**UNLIMITED, "requests_per_minute": 100, "max_concurrent": 8},
        "source": "file",
        "keys": {"batch": {"limits": {**UNLIMITED, "requests_per_minute": 5}, "source": "file"}},
        "models": {},
    }
    other = (await http.get("/admin/teams/radiology/quotas", headers=as_("rad-admin"))).json()
    assert other["source"] == "default" and other["limits"]["requests_per_minute"] == 100


async def test_put_replaces_limits_null_is_unlimited_and_the_change_is_audited(api):
    http, quotas, audit = api
    body = {"requests_per_minute": 2, "tokens_per_day": 50000, "max_concurrent": None}
    response = await http.put("/admin/teams/ed/quotas", json=body, headers=as_("root"))
    assert response.status_code == 200
    assert response.json()["limits"] == {**UNLIMITED, "requests_per_minute": 2, "tokens_per_day": 50000}
    assert response.json()["source"] == "admin"
    [change] = audit.changes
    assert (change.source, change.actor, change.team) == (ChangeSource.ADMIN_API, "root", "ed")
    assert change.before.max_concurrent == 8 and change.after.max_concurrent is None
    # In force at once for requests.
    await quotas.admit("ed", reserve_tokens=1)
    await quotas.admit("ed", reserve_tokens=1)
    assert (await quotas.team_limits("ed"))[0].limits.requests_per_minute == 2

    model = await http.put("/admin/teams/ed/quotas?model=llama", json={"tokens_per_minute": 10}, headers=as_("root"))
    assert model.json()["models"] == {"llama": {"limits": {**UNLIMITED, "tokens_per_minute": 10}, "source": "admin"}}
    assert audit.changes[-1].scope == Scope(ScopeKind.MODEL, "llama")

    deleted = await http.delete("/admin/teams/ed/quotas", headers=as_("root"))
    assert deleted.json()["source"] == "file" and deleted.json()["limits"]["max_concurrent"] == 8
    assert len(audit.changes) == 3


async def test_invalid_bodies_and_scopes_are_refused(api):
    http, _, audit = api
    for body in ({"requests_per_minute": -1}, {"requests_per_minut": 5}, {"tokens_per_day": "many"}, {"max_concurrent": 1.5}):
        response = await http.put("/admin/teams/ed/quotas", json=body, headers=as_("root"))
        assert response.status_code == 422, body
    both = await http.put("/admin/teams/ed/quotas?model=a&key_id=b", json={}, headers=as_("root"))
    assert both.status_code == 400 and both.json()["error"]["param"] == "model"
    assert audit.changes == []


async def test_only_platform_admins_change_quotas_and_team_admins_read_only_their_team(api):
    http, _, audit = api
    for who in ("ed-admin", "ed-user", "rad-admin"):
        response = await http.put("/admin/teams/ed/quotas", json={"requests_per_minute": 1}, headers=as_(who))
        assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"
        assert (await http.delete("/admin/teams/ed/quotas", headers=as_(who))).status_code == 403
    assert audit.changes == []
    assert (await http.get("/admin/teams/ed/quotas", headers=as_("ed-admin"))).status_code == 200
    assert (await http.get("/admin/teams/ed/usage", headers=as_("ed-admin"))).status_code == 200
    assert (await http.get("/admin/teams/ed/quotas", headers=as_("rad-admin"))).status_code == 403
    assert (await http.get("/admin/teams/ed/usage", headers=as_("rad-admin"))).status_code == 403
    assert (await http.get("/admin/teams/ed/usage", headers=as_("ed-user"))).status_code == 403


async def test_usage_is_reported_per_day_or_per_model(api):
    http, quotas, _ = api
    for model, prompt, completion in (("a", 10, 5), ("b", 7, 3), ("a", 1, 1)):
        admission = await quotas.admit("ed", model=model, reserve_tokens=100)
        await quotas.settle(admission, prompt_tokens=prompt, completion_tokens=completion)
    today = dt.datetime.now(dt.timezone.utc).date()
    by_model = await http.get(f"/admin/teams/ed/usage?from={today}&to={today}&group_by=model", headers=as_("root"))
    assert by_model.json() == {
        "object": "list", "team": "ed", "from": today.isoformat(), "to": today.isoformat(), "group_by": "model",
        "data": [
            {"model": "a", "requests": 2, "prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17},
            {"model": "b", "requests": 1, "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        ],
    }
    by_day = (await http.get("/admin/teams/ed/usage", headers=as_("root"))).json()  # default: this month so far
    assert by_day["from"] == today.replace(day=1).isoformat() and by_day["to"] == today.isoformat()
    assert by_day["data"] == [{"day": today.isoformat(), "requests": 3, "prompt_tokens": 18, "completion_tokens": 9, "total_tokens": 27}]
    backwards = await http.get("/admin/teams/ed/usage?from=2026-02-02&to=2026-02-01", headers=as_("root"))
    assert backwards.status_code == 400 and backwards.json()["error"]["type"] == "invalid_request_error"
    too_long = await http.get("/admin/teams/ed/usage?from=2024-01-01&to=2026-01-01", headers=as_("root"))
    assert too_long.status_code == 400
    bad_group = await http.get("/admin/teams/ed/usage?group_by=week", headers=as_("root"))
    assert bad_group.status_code == 422
