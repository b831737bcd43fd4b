"""Strict, consistent input through a real governed gateway process (identity, quotas, audit log on).

- OpenAI's strict fields stay strict: ``max_tokens: "10"`` and ``stream: "yes"`` are 400s, not coerced;
- ``response_format`` is validated: text is served, other shapes are 400s, and so are structured
  formats on a worker that cannot constrain decoding (this fake one);
- identifiers have one set of limits: a team name the audit log could not hold is a 4xx at the edge,
  never a 500, and the connection it arrived on stays usable;
- quotas exist only for registered teams (404 otherwise);
- bodies over the limit are 413 on every route, whether they declare their length or not.
"""
from __future__ import annotations

import json

import httpx
import pytest
from e2e_support import ProcessStack, make_keys
from http_wire import KeepAliveConnection

from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
from gateway.audit.service import create_audit_engine

MODEL = "fake-chat"
LIMIT = 1 << 20  # max_request_bytes of the gateway under test
KEYS = {"user": ("cardiology", "user"), "admin": ("platform", "platform_admin"), "auditor": ("platform", "auditor")}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("strict")
    procs = ProcessStack(workdir)
    try:
        worker = procs.start_fake_worker("fake-worker", MODEL, "--max-model-len", "4096")
        (workdir / "gateway-0").mkdir()  # start_gateway's data directory: its database, keys made first
        keys = make_keys(f"sqlite:///{workdir / 'gateway-0' / 'ward.db'}", KEYS)
        gateway = procs.start_gateway({MODEL: [worker.address]}, config={"max_request_bytes": LIMIT})
        gateway.keys = keys
        yield gateway
    finally:
        procs.close()


def client(gateway, who: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=60, headers={"authorization": f"Bearer {gateway.keys[who]}"})


def chat(**fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, **fields}


def openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("field,value,expected", [
    ("max_tokens", "10", "an integer"),
    ("max_tokens", 10.0, "an integer"),
    ("stream", "yes", "a boolean"),
    ("stream", 1, "a boolean"),
    ("n", "2", "an integer"),
    ("logprobs", "true", "a boolean"),
    ("temperature", "0.5", "a number"),
])
def test_openai_strict_fields_are_never_coerced(gateway, field, value, expected):
    with client(gateway, "user") as http:
        error = openai_error(http.post("/v1/chat/completions", json=chat(**{field: value})), 400)
    assert error["param"] == field and error["code"] == "invalid_type"
    assert f"expected {expected}" in error["message"]


def test_what_openai_accepts_stays_accepted(gateway):
    with client(gateway, "user") as http:
        for fields in ({"stop": "x"}, {"stop": ["x", "y"]}, {"temperature": 1}, {"temperature": 0.5}, {"n": 2},
                       {"response_format": {"type": "text"}}, {"response_format": None}):
            response = http.post("/v1/chat/completions", json=chat(**fields))
            assert response.status_code == 200, (fields, response.text)


@pytest.mark.parametrize("response_format", [
    "json",
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    {"type": "xml"},
    {"type": "text", "strict": True},
    {},
    ["text"],
])
def test_response_format_other_than_text_is_a_400_naming_the_field(gateway, response_format):
    with client(gateway, "user") as http:
        error = openai_error(http.post("/v1/chat/completions", json=chat(response_format=response_format)), 400)
    assert error["param"] == "response_format"
    if isinstance(response_format, dict) and response_format.get("type", "").startswith("json"):
        assert "structured output" in error["message"]


def test_overlong_identifiers_are_4xx_in_openai_shape_and_the_connection_stays_usable(gateway):
    admin = {"authorization": f"Bearer {gateway.keys['admin']}", "content-type": "application/json"}
    auditor = {"authorization": f"Bearer {gateway.keys['auditor']}"}
    team_65 = "a" * 65  # passed the old 200-character path check, failed the audit log's 64
    limits = json.dumps({"requests_per_minute": 5}).encode()
    cases = [
        ("PUT", f"/admin/teams/{team_65}/quotas", limits, admin, 400),
        ("PUT", f"/admin/teams/{'b' * 200}/quotas", limits, admin, 400),
        ("PATCH", f"/admin/teams/{team_65}/quotas", limits, admin, 400),
        ("DELETE", f"/admin/teams/{team_65}/quotas", b"", admin, 400),
        ("GET", f"/admin/teams/{team_65}/usage", b"", admin, 400),
        ("GET", f"/admin/teams/{team_65}/keys", b"", admin, 400),
        ("POST", f"/admin/teams/{team_65}/keys", b"{}", admin, 400),
        ("POST", "/admin/teams", json.dumps({"name": team_65}).encode(), admin, 400),
        ("PUT", f"/admin/teams/cardiology/quotas?key_id={'k' * 40}", limits, admin, 400),
        ("PUT", f"/admin/teams/cardiology/quotas?model={'m' * 300}", limits, admin, 400),
        ("DELETE", f"/admin/keys/{'k' * 40}", b"", admin, 400),
        ("GET", f"/v1/models/{'m' * 300}", b"", admin, 404),
        ("GET", f"/audit/records?team={team_65}", b"", auditor, 400),
        ("GET", f"/audit/records/{'r' * 200}", b"", auditor, 400),
    ]
    with KeepAliveConnection(gateway.url) as connection:
        for method, path, body, headers, status in cases:
            response = connection.request(method, path, body=body, headers=headers)
            assert response.status == status, (method, path, response.body)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert connection.request("GET", "/healthz").status == 200  # same connection, still served


def test_the_model_404_for_an_overlong_name_is_audited(gateway):
    with client(gateway, "user") as http:
        response = http.get(f"/v1/models/{'m' * 300}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    engine = create_audit_engine(gateway.database_url)
    try:
        record = AuditReader(engine).get_record(response.headers["x-request-id"], ReadScope(teams=None, content=True, kinds=None))
    finally:
        engine.dispose()
    assert record is not None and record["http_status"] == 404


def test_quotas_only_for_registered_teams(gateway):
    with client(gateway, "admin") as http:
        for method in ("PUT", "PATCH"):
            error = openai_error(http.request(method, "/admin/teams/nosuchteam/quotas", json={"requests_per_minute": 5}), 404)
            assert error["code"] == "team_not_found" and error["param"] == "team"
        for method, path in (("DELETE", "quotas"), ("GET", "quotas"), ("GET", "usage")):
            openai_error(http.request(method, f"/admin/teams/nosuchteam/{path}"), 404)
        assert http.put("/admin/teams/cardiology/quotas", json={"requests_per_minute": 500}).status_code == 200
        assert http.delete("/admin/teams/cardiology/quotas").status_code == 200
    with client(gateway, "user") as http:  # a caller without the right gets 403, not a hint the team is missing
        openai_error(http.put("/admin/teams/nosuchteam/quotas", json={"requests_per_minute": 5}), 403)


def test_a_100_mb_body_on_admin_teams_is_413(gateway):
    with client(gateway, "admin") as http:
        response = http.post("/admin/teams", content=b"x" * (100 << 20), headers={"content-type": "application/json"})
    error = openai_error(response, 413)
    assert error["code"] == "request_too_large"


def _chunks(total: int):
    for _ in range(total // (256 << 10)):
        yield b" " * (256 << 10)


ROUTES = [  # (method, path, whether the route reads a body)
    ("POST", "/admin/teams", True),
    ("POST", "/admin/teams/cardiology/keys", True),
    ("PUT", "/admin/teams/cardiology/quotas", True),
    ("POST", "/v1/chat/completions", True),
    ("POST", "/v1/embeddings", True),
    ("GET", "/audit/records", False),
    ("GET", "/v1/models", False),
    ("POST", "/no/such/route", False),
]


@pytest.mark.parametrize("method,path,reads_body", ROUTES)
def test_a_declared_length_over_the_limit_is_413_on_every_route_before_anything_else(gateway, method, path, reads_body):
    who = "auditor" if path.startswith("/audit") else "admin"
    with client(gateway, who) as http:
        response = http.request(method, path, content=b" " * (LIMIT + 1), headers={"content-type": "application/json"})
    assert openai_error(response, 413)["code"] == "request_too_large"


@pytest.mark.parametrize("method,path,reads_body", ROUTES)
def test_a_chunked_body_is_413_once_it_passes_the_limit(gateway, method, path, reads_body):
    who = "auditor" if path.startswith("/audit") else "admin"
    with client(gateway, who) as http:
        response = http.request(method, path, content=_chunks(3 * LIMIT), headers={"content-type": "application/json"})
    if reads_body:
        assert openai_error(response, 413)["code"] == "request_too_large"
    else:  # a route that reads no body never buffers one sent without a length: it answers as usual
        assert response.status_code in (200, 404), response.text


def test_after_a_413_the_connection_serves_the_next_request(gateway):
    headers = {"authorization": f"Bearer {gateway.keys['admin']}", "content-type": "application/json"}
    with KeepAliveConnection(gateway.url) as connection:
        refused = connection.request("POST", "/admin/teams", body=b" " * (2 * LIMIT), headers=headers)
        listed = connection.request("GET", "/admin/teams", headers=headers)
    assert refused.status == 413 and refused.json()["error"]["code"] == "request_too_large"
    assert listed.status == 200


def refused_read(gateway, who: str, path: str) -> dict:
    """The OpenAI error of a GET that must be a 400 (the query as written, repeats and all)."""
    with client(gateway, who) as http:
        return openai_error(http.get(path), 400)


@pytest.mark.parametrize("who,path,misspelt", [
    ("auditor", "/audit/records?tem=cardiology", "tem"),  # would have answered every team's records
    ("auditor", "/audit/records?team=cardiology&=false", ""),
    ("auditor", "/audit/export?format=jsonl&sined=true", "sined"),
    ("admin", "/admin/usage/series?bucket=hour&teem=cardiology", "teem"),
    ("admin", "/admin/teams/cardiology/usage?from=2026-12-01&group_by=model&until=2026-12-07", "until"),
    # reading the quotas takes no scope: every scope of the team is answered, never the team's alone as one model's
    ("admin", "/admin/teams/cardiology/quotas?model=fake-chat", "model"),
    ("admin", "/admin/teams?limit=5", "limit"),
])
def test_wards_own_apis_refuse_query_parameters_they_do_not_take(gateway, who, path, misspelt):
    error = refused_read(gateway, who, path)
    assert error["code"] == "unknown_parameter" and error["param"] == misspelt, error
    assert f"Unknown query parameter `{misspelt}`" in error["message"], error


def test_declared_query_parameters_pass_and_the_openai_routes_stay_lenient(gateway):
    with client(gateway, "auditor") as http:
        page = http.get("/audit/records", params={"team": "cardiology", "status": "ok", "limit": 5})
        assert page.status_code == 200, page.text
    with client(gateway, "admin") as http:
        series = http.get("/admin/usage/series", params={"bucket": "day", "team": "cardiology"})
        assert series.status_code == 200, series.text
        usage = http.get("/admin/teams/cardiology/usage", params={"from": "2026-12-01", "to": "2026-12-07",
                                                                   "group_by": "model"})
        assert usage.status_code == 200, usage.text
        assert http.get("/admin/teams/cardiology/quotas").status_code == 200
    with client(gateway, "user") as http:
        assert http.get("/v1/models", params={"limit": 5}).status_code == 200  # as OpenAI's own
    # who may not read is told so before anything else: no key is a 401, whatever the query
    anonymous = httpx.get(f"{gateway.url}/audit/records", params={"tem": "cardiology"}, timeout=30)
    assert openai_error(anonymous, 401)["code"] != "unknown_parameter"


@pytest.mark.parametrize("who,path,param", [
    ("auditor", "/audit/records?since=0.0", "since"),  # pydantic alone would read 1970-01-01
    ("auditor", "/audit/export?until=1733600000", "until"),
    ("admin", "/admin/usage/series?since=1.7e9", "since"),
    ("admin", "/admin/teams/cardiology/usage?from=0", "from"),
])
def test_times_in_wards_own_queries_are_iso_text_never_a_number(gateway, who, path, param):
    error = refused_read(gateway, who, path)
    assert error["param"] == param and "ISO-8601" in error["message"], error
    with client(gateway, "auditor") as http:  # the same moment as text is served
        assert http.get("/audit/records", params={"since": "1970-01-01T00:00:00Z", "limit": 1}).status_code == 200


def test_a_single_valued_query_parameter_given_twice_is_refused_not_guessed(gateway):
    error = refused_read(gateway, "admin", "/admin/usage/series?team=cardiology&team=platform")
    assert (error["param"], error["code"]) == ("team", "duplicate_parameter"), error


def test_the_query_check_reads_each_routes_own_parameters_lists_included():
    from fastapi import APIRouter, FastAPI, Query
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from gateway.http.errors import InvalidRequest
    from gateway.http.query_params import declared_query_only

    async def caller() -> str:
        return "someone"

    app = FastAPI()  # the refusal's own shape; the gateway's handlers are exercised above
    app.add_exception_handler(InvalidRequest, lambda request, error: JSONResponse(error.body(), error.status_code))
    router = APIRouter(dependencies=[declared_query_only(caller)])

    @router.get("/tags")
    async def tags(tag: list[str] | None = Query(default=None), limit: int = 10) -> dict:
        return {"tag": tag, "limit": limit}

    app.include_router(router)
    with TestClient(app) as http:
        assert http.get("/tags?tag=a&tag=b&limit=2").json() == {"tag": ["a", "b"], "limit": 2}
        assert http.get("/tags?limit=2&limit=3").json()["error"]["code"] == "duplicate_parameter"
        refused = http.get("/tags?tags=a").json()["error"]
        assert refused["code"] == "unknown_parameter" and "`limit`, `tag`" in refused["message"]
