"""The auditor API and its access matrix: auditors read and export, users cannot, team admins see only
their team's metadata, and every read (allowed or refused) is itself recorded."""
from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from gateway.audit.reader import AuditReader
from gateway.audit.records import RequestStatus
from gateway.audit.router import create_audit_router
from gateway.audit.service import AuditServices
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import AuthMethod, Principal, Role
from test_audit_support import ALICE, BOB, db_url, engine, make_log, pg_module_url, request_end, request_start, signer  # noqa: F401

PRINCIPALS = {
    "auditor": Principal("auditor-1", "compliance", frozenset({Role.AUDITOR}), AuthMethod.OIDC),
    "user": Principal("key-alice", "cardiology", frozenset({Role.USER}), AuthMethod.API_KEY, key_id="key-alice"),
    "cardio-admin": Principal("cardio-admin", "cardiology", frozenset({Role.TEAM_ADMIN, Role.USER}), AuthMethod.API_KEY),
    "platform-admin": Principal("root", "platform", frozenset({Role.PLATFORM_ADMIN, Role.TEAM_ADMIN, Role.USER}), AuthMethod.API_KEY),
}


def principal_from_header(x_test_principal: str = Header()) -> Principal:
    return PRINCIPALS[x_test_principal]


async def _populate(log) -> None:
    await log.record_request(request_start(0, ALICE), request_end(0))  # cardiology, ok
    await log.record_request(request_start(1, BOB), request_end(1))  # radiology, ok
    handle = await log.open(request_start(2, ALICE, model="llama-70b"))  # a finished stream
    await log.complete(handle, request_end(2))
    await log.open(request_start(3, BOB))  # a stream whose gateway died: incomplete
    await log.record_request(request_start(4, ALICE), request_end(4, status=RequestStatus.REJECTED, http_status=429, response=None, error="quota exceeded", error_code="rate_limited"))
    await log.record_request(request_start(5, ALICE, prompt="=HYPERLINK(\"http://x\")"), request_end(5))
    await log.record_admin_change(ALICE, "key.revoke", "key:k9", {"revoked_at": None}, {"revoked_at": "2025-01-01T00:00:00Z", "team": "cardiology"})


@pytest.fixture
def client(engine, signer):
    log = make_log(engine, signer)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await log.start()
        await _populate(log)
        app.state.audit_services = AuditServices(log=log, reader=AuditReader(engine), engine=engine)
        yield
        await log.close()

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(PermissionDenied)
    async def forbidden(_: Request, exc: PermissionDenied):
        return JSONResponse({"error": {"message": exc.message, "type": "invalid_request_error", "param": None, "code": exc.code}}, status_code=403)

    app.include_router(create_audit_router(principal=principal_from_header))
    with TestClient(app) as test_client:
        yield test_client


def get(client, who, path, **params):
    return client.get(path, params=params, headers={"x-test-principal": who})


def access_entries(client):
    body = get(client, "auditor", "/audit/records", kind="access", limit=1000).json()
    return body["data"]


def test_auditor_sees_every_record_with_content_and_streams_merged(client):
    body = get(client, "auditor", "/audit/records", kind="request").json()
    records = {r["id"]: r for r in body["data"]}
    assert list(records) == ["req-0", "req-1", "req-2", "req-3", "req-4", "req-5"] and body["next_cursor"] is None
    stream = records["req-2"]
    assert stream["complete"] is True and stream["status"] == "ok" and [e["kind"] for e in stream["entries"]] == ["request_open", "request_complete"]
    assert stream["prompt"][0]["content"].startswith("Question 2") and stream["response"].startswith("Answer 2")
    assert (stream["model"], stream["prompt_tokens"], stream["completion_tokens"]) == ("llama-70b", 22, 12)
    incomplete = records["req-3"]
    assert incomplete["complete"] is False and incomplete["status"] == "incomplete" and incomplete["finished_at"] is None
    assert records["req-4"]["http_status"] == 429 and records["req-4"]["error"] == {"message": "quota exceeded", "code": "rate_limited"}


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"team": "radiology"}, ["req-1", "req-3"]),
        ({"subject": "key-alice", "kind": "request"}, ["req-0", "req-2", "req-4", "req-5"]),
        ({"model": "llama-70b"}, ["req-2"]),
        ({"status": "incomplete"}, ["req-3"]),
        ({"status": "429"}, ["req-4"]),
        ({"status": "ok", "team": "cardiology", "kind": "request"}, ["req-0", "req-2", "req-5"]),
        ({"since": "2025-03-01T12:00:02Z", "until": "2025-03-01T12:00:04Z"}, ["req-2", "req-3"]),
        # the same moments written with another offset
        ({"since": "2025-03-01T14:00:02+02:00", "until": "2025-03-01T07:00:04-05:00"}, ["req-2", "req-3"]),
    ],
)
def test_filters(client, filters, expected):
    body = get(client, "auditor", "/audit/records", **filters).json()
    assert [r["id"] for r in body["data"]] == expected


@pytest.mark.parametrize("status", ["okay", "²", "99999999999999999999", "99", "600"])
def test_a_status_that_no_record_can_have_is_refused_not_read_as_none(client, status):
    for path in ("/audit/records", "/audit/export"):
        answer = get(client, "auditor", path, status=status)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_query", (path, answer.text)


@pytest.mark.parametrize("bound", [{"since": "0001-01-01T00:00:00+05:00"}, {"until": "9999-12-31T23:00:00-05:00"}])
def test_a_bound_outside_the_utc_calendar_is_a_400(client, bound):
    answer = get(client, "auditor", "/audit/records", **bound)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_query"


def test_cursor_pagination_walks_every_record_once(client):
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = get(client, "auditor", "/audit/records", kind="request", **params).json()
        seen += [r["id"] for r in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"req-{i}" for i in range(6)]
    bad = get(client, "auditor", "/audit/records", cursor="not-a-cursor")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_query"


def test_get_one_record(client):
    record = get(client, "auditor", "/audit/records/req-2").json()
    assert record["id"] == "req-2" and record["complete"] is True
    missing = get(client, "auditor", "/audit/records/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "record_not_found"
    admin = get(client, "auditor", "/audit/records", kind="admin").json()["data"][0]
    assert get(client, "auditor", f"/audit/records/{admin['id']}").json()["data"]["action"] == "key.revoke"


def test_export_jsonl_and_csv(client):
    jsonl = get(client, "auditor", "/audit/export", format="jsonl", kind="request")
    assert jsonl.status_code == 200 and jsonl.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [r["id"] for r in lines] == [f"req-{i}" for i in range(6)]
    assert lines[2]["response"].startswith("Answer 2")
    exported = get(client, "auditor", "/audit/export", format="csv", team="cardiology", kind="request")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["id"] for r in rows] == ["req-0", "req-2", "req-4", "req-5"]
    assert rows[0]["status"] == "ok" and rows[0]["prompt_tokens"] == "20" and json.loads(rows[0]["prompt"])[0]["role"] == "user"
    assert rows[3]["prompt"] == "'=HYPERLINK(\"http://x\")"  # never a bare formula for spreadsheets
    assert rows[0]["response"] == "Answer 0: call 555-123-4567."


def test_user_cannot_read_and_the_attempt_is_recorded(client):
    for path in ("/audit/records", "/audit/records/req-0", "/audit/export"):
        assert get(client, "user", path).status_code == 403
    denied = [a for a in access_entries(client) if a["status"] == "denied"]
    assert [(a["subject"], a["data"]["action"]) for a in denied] == [("key-alice", "list"), ("key-alice", "get"), ("key-alice", "export")]


def test_team_admin_sees_only_its_teams_metadata(client):
    records = get(client, "cardio-admin", "/audit/records").json()["data"]
    assert {r["team"] for r in records} == {"cardiology"}
    assert {r["kind"] for r in records} == {"request", "admin"}
    for record in (r for r in records if r["kind"] == "request"):
        assert "prompt" not in record and "response" not in record
        assert set(record["params"]) <= {"temperature", "max_tokens"}
    with_answer = next(r for r in records if r["id"] == "req-0")
    # not even digests: an unkeyed hash of a short answer is the answer to whoever can guess and hash it
    assert not {"prompt", "response", "prompt_sha256", "response_sha256"} & set(with_answer)
    assert with_answer["prompt_tokens"] is not None  # the metadata is still there
    assert get(client, "cardio-admin", "/audit/records/req-1").status_code == 404  # radiology's
    assert get(client, "cardio-admin", "/audit/records", kind="access").json()["data"] == []
    export = get(client, "cardio-admin", "/audit/export", format="jsonl").text
    assert "Question" not in export and "radiology" not in export


def test_platform_admin_sees_all_teams_metadata_only(client):
    records = get(client, "platform-admin", "/audit/records", kind="request").json()["data"]
    assert {r["team"] for r in records} == {"cardiology", "radiology"}
    assert all("prompt" not in r and "response" not in r for r in records)


def test_every_read_is_recorded_with_what_was_returned(client):
    get(client, "auditor", "/audit/records", team="radiology")
    get(client, "cardio-admin", "/audit/records/req-0")
    get(client, "auditor", "/audit/export", format="csv")
    reads = access_entries(client)[:3]
    listed, fetched, exported = (r["data"] for r in reads)
    assert listed["actor"]["subject"] == "auditor-1" and listed["query"]["team"] == "radiology"
    assert listed["record_ids"] == ["req-1", "req-3"] and listed["allowed"] is True
    assert fetched["actor"]["subject"] == "cardio-admin" and fetched["record_ids"] == ["req-0"]
    assert exported["action"] == "export" and exported["query"]["format"] == "csv" and exported["through_seq"] >= 9
    assert listed["client_address"] == "testclient"
