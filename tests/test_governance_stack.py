"""Governance through the real stack: one ``ward gateway --config`` process with identity, quotas and the
audit log all on, its database a fresh PostgreSQL database, quota counters in the real Redis (DB 6), a
fake worker process behind it, driven with httpx and the official ``openai`` client.

Every response that carries an ``x-request-id`` goes into a ledger; the last test checks that the audit
log holds exactly one request record per entry of the ledger (answers, streams, 401, 403, 429, 400 and
404 alike) and that ``ward audit verify`` passes. Each test uses its own team, so their limits never
interfere.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import yaml
from e2e_support import ROOT, ProcessStack, clean_env, make_keys, wait_until

from ward.benchmarks.audit import scratch_postgres_database
from quota_support import delete_prefix, redis_url, require_redis, unique_prefix
from test_audit_support import PG_SERVER_URL

MODEL = "fake-chat"
REDIS = redis_url(6)
RATE_HEADERS = {f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset") for kind in ("requests", "tokens")}
HIGH_TOKENS = 10_000_000
QUOTAS = {
    "defaults": {"tokens_per_minute": HIGH_TOKENS},
    "teams": {
        "cardiology": {"limits": {"requests_per_minute": 3}},
        "radiology": {"limits": {"requests_per_minute": 1}},
        "oncology": {"limits": {"max_concurrent": 1}},
    },
}
KEYS = {
    "cardiology": ("cardiology", "user"),
    "radiology": ("radiology", "user"),
    "oncology": ("oncology", "user"),
    "pathology": ("pathology", "user"),
    "pathology_admin": ("pathology", "team_admin"),
    "neurology": ("neurology", "user"),
    "genetics": ("genetics", "user"),
    "genetics_admin": ("genetics", "team_admin"),
    "admin": ("platform", "platform_admin"),
    "auditor": ("platform", "auditor"),
}


def chat(content: str = "summarise the handover note", **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


class Ledger:
    """Every response seen with an x-request-id (the requests the audit log must hold), thread-safe."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.statuses: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def hook(self, response: httpx.Response) -> None:
        rid = response.headers.get("x-request-id")
        if rid:
            with self._lock:
                self.ids.append(rid)
                self.statuses.append((rid, response.status_code))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_redis(REDIS)
    workdir = tmp_path_factory.mktemp("governance")
    prefix = unique_prefix("governance")
    quota_file = workdir / "quotas.yaml"
    quota_file.write_text(yaml.safe_dump(QUOTAS))
    procs = ProcessStack(workdir)
    try:
        with scratch_postgres_database(PG_SERVER_URL, "ward_governance") as database_url:
            keys = make_keys(database_url, KEYS)
            worker = procs.start_fake_worker("fake-worker", MODEL, "--token-delay", "0.01", "--max-model-len", "4096")
            config = {"quota": {"config_file": str(quota_file), "key_prefix": prefix, "reload_check_s": 0.1,
                                "override_refresh_s": 0.2, "redis_timeout_s": 2.0}}
            env = clean_env(WARD_DATABASE_URL=database_url, WARD_REDIS_URL=REDIS)
            gateway = procs.start_gateway({MODEL: [worker.address]}, config=config, env=env)
            yield {"gateway": gateway, "keys": keys, "database_url": database_url, "quota_file": quota_file,
                   "ledger": Ledger()}
            procs.close()
    finally:
        procs.close()
        delete_prefix(REDIS, prefix)


def http(stack, key: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {stack['keys'][key] if key in stack['keys'] else key}"} if key else {}
    return httpx.Client(base_url=stack["gateway"].url, headers=headers, timeout=30,
                        event_hooks={"response": [stack["ledger"].hook]})


def openai_client(stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['gateway'].url}/v1", api_key=stack["keys"][key], max_retries=0,
                         http_client=http(stack, None))


def audit_records(stack, **query) -> list[dict]:
    with http(stack, "auditor") as auditor:
        response = auditor.get("/audit/records", params={"limit": 1000, **query})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_within_limits_six_rate_limit_headers_and_over_the_rate_a_429_in_openais_shape(stack):
    with http(stack, "cardiology") as client:
        answers = [client.post("/v1/chat/completions", json=chat(f"note {i}")) for i in range(2)]
        streamed = client.post("/v1/chat/completions", json=chat("note 2", stream=True))
        refused = client.post("/v1/chat/completions", json=chat("note 3"))
    for response in [*answers, streamed]:
        assert response.status_code == 200 and RATE_HEADERS <= set(response.headers)
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert [r.headers["x-ratelimit-remaining-requests"] for r in [*answers, streamed]] == ["2", "1", "0"]
    assert refused.status_code == 429 and RATE_HEADERS <= set(refused.headers)
    assert refused.json() == {"error": {"message": refused.json()["error"]["message"], "type": "requests", "param": None,
                                        "code": "rate_limit_exceeded"}}
    assert 1 <= int(refused.headers["retry-after"]) <= 60 and int(refused.headers["retry-after-ms"]) <= 60_000


def test_a_platform_admins_quota_change_takes_effect_and_is_audited_and_a_user_cannot_make_one(stack):
    with http(stack, "radiology") as client, http(stack, "admin") as admin:
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200
        assert client.post("/v1/chat/completions", json=chat()).status_code == 429
        denied = client.put("/admin/teams/radiology/quotas", json={"requests_per_minute": 1000})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "permission_denied"
        changed = admin.put("/admin/teams/radiology/quotas", json={"requests_per_minute": 50, "tokens_per_minute": HIGH_TOKENS})
        assert changed.status_code == 200 and changed.json()["source"] == "admin"
        again = client.post("/v1/chat/completions", json=chat())
    assert again.status_code == 200
    assert again.headers["x-ratelimit-limit-requests"] == "50"
    assert again.headers["x-ratelimit-remaining-requests"] == "48"  # the first answer is still in the window; the 429 took nothing
    [record] = audit_records(stack, kind="admin", team="radiology")
    change = record["data"]
    assert (change["action"], change["target"]) == ("quota.set", "team:radiology")
    assert record["subject"] == key_id(stack, "admin") and change["actor"]["roles"] == ["platform_admin", "team_admin", "user"]
    assert change["before"]["limits"]["requests_per_minute"] == 1
    assert change["after"]["limits"]["requests_per_minute"] == 50 and change["after"]["source"] == "admin_api"


def key_id(stack, label: str) -> str:
    return stack["keys"][label].split(".")[0].removeprefix("ward-")


def test_the_openai_clients_retry_waits_for_retry_after_then_succeeds(stack):
    long_stream = threading.Thread(target=_read_stream, args=(stack, "oncology", 100))  # ~1 s at 10 ms a token
    long_stream.start()
    try:
        assert wait_until(lambda: _requests_in_flight(stack) == 1, 5)
        seen: list[int] = []
        recording = http(stack, None)
        recording.event_hooks["response"].append(lambda r: seen.append(r.status_code))
        client = openai.OpenAI(base_url=f"{stack['gateway'].url}/v1", api_key=stack["keys"]["oncology"], max_retries=2,
                               http_client=recording)
        started = time.monotonic()
        answer = client.chat.completions.create(**chat())
        waited = time.monotonic() - started
    finally:
        long_stream.join(timeout=30)
    assert answer.choices[0].message.content
    assert seen[0] == 429 and seen[-1] == 200, seen
    assert waited >= 0.9, waited  # Retry-After: 1 for a concurrency limit, not the client's 0.5 s backoff


def _read_stream(stack, key: str, max_tokens: int) -> None:
    with http(stack, key) as client:
        with client.stream("POST", "/v1/chat/completions",
                           json=chat(max_tokens=max_tokens, stream=True, ignore_eos=True)) as response:
            assert response.status_code == 200
            for _ in response.iter_lines():
                pass


def _requests_in_flight(stack) -> float:
    text = httpx.get(f"{stack['gateway'].url}/metrics").text
    line = next(line for line in text.splitlines() if line.startswith("ward_gateway_requests_in_flight "))
    return float(line.split()[1])


def test_usage_reports_the_tokens_the_clients_were_charged(stack):
    client = openai_client(stack, "pathology")
    charged = []
    charged.append(client.chat.completions.create(**chat("first question")).usage)
    charged.append(client.completions.create(model=MODEL, prompt="the patient is stable", max_tokens=3).usage)
    with client.chat.completions.create(**chat("third question", stream=True, stream_options={"include_usage": True})) as stream:
        charged.append([chunk.usage for chunk in stream if chunk.usage][-1])
    with http(stack, "pathology_admin") as team_admin, http(stack, "pathology") as user:
        usage = team_admin.get("/admin/teams/pathology/usage", params={"group_by": "model"})
        refused = user.get("/admin/teams/pathology/usage")
    assert usage.status_code == 200, usage.text
    [row] = usage.json()["data"]
    assert row["model"] == MODEL and row["requests"] == 3
    assert row["prompt_tokens"] == sum(u.prompt_tokens for u in charged)
    assert row["completion_tokens"] == sum(u.completion_tokens for u in charged)
    assert refused.status_code == 403


def test_the_quota_file_is_reloaded_on_change_and_the_reload_is_audited(stack):
    changed = {**QUOTAS, "teams": {**QUOTAS["teams"], "neurology": {"limits": {"requests_per_minute": 7}}}}
    stack["quota_file"].write_text(yaml.safe_dump(changed))
    with http(stack, "neurology") as client:
        limits = []

        def new_limit_in_force() -> bool:
            response = client.post("/v1/chat/completions", json=chat())
            limits.append(response.headers.get("x-ratelimit-limit-requests"))
            return limits[-1] == "7"

        assert wait_until(new_limit_in_force, 5, interval_s=0.1), limits
    [reload] = audit_records(stack, kind="admin", team="neurology")
    change = reload["data"]
    assert (change["action"], change["target"], change["actor"]["subject"]) == (
        "quota.file_reload", "team:neurology", f"config:{stack['quota_file']}")
    assert change["before"]["limits"]["requests_per_minute"] is None and change["after"]["limits"]["requests_per_minute"] == 7


def test_an_auditor_reads_and_exports_with_content_and_others_cannot(stack):
    with http(stack, "auditor") as auditor, http(stack, "cardiology") as user, http(stack, "admin") as admin:
        records = auditor.get("/audit/records", params={"team": "cardiology", "kind": "request"}).json()["data"]
        exported = auditor.get("/audit/export", params={"team": "cardiology", "format": "jsonl"})
        metadata_only = admin.get("/audit/records", params={"team": "cardiology", "kind": "request"}).json()["data"]
        refused = user.get("/audit/records")
        no_inference = auditor.post("/v1/chat/completions", json=chat())
    answered = [r for r in records if r["status"] == "ok"]
    assert len(answered) == 3 and all(r["prompt"] == chat(f"note {i}")["messages"] for i, r in enumerate(answered))
    assert [r["http_status"] for r in records].count(429) == 1
    assert exported.status_code == 200
    assert [json.loads(line)["id"] for line in exported.text.splitlines()] == [r["id"] for r in records]
    assert {r["id"] for r in metadata_only} == {r["id"] for r in records}
    assert all("prompt" not in r or r["prompt"] is None for r in metadata_only)  # a platform admin sees metadata only
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    assert no_inference.status_code == 403  # separation of duties: auditors read the log, nothing else
    access = audit_records(stack, kind="access", status="denied")
    assert any(r["subject"] == key_id(stack, "cardiology") for r in access), access


def test_rejections_bad_requests_and_unknown_routes_are_answered_in_openais_shape(stack):
    with http(stack, "sk-not-a-ward-key") as stranger, http(stack, "cardiology") as user, http(stack, "admin") as admin:
        responses = {
            401: stranger.post("/v1/chat/completions", json=chat()),
            400: user.post("/v1/chat/completions", json=chat(temperature=5)),
            404: user.post("/v1/chat/completions", json={**chat(), "model": "no-such-model"}),
        }
        bad_query = admin.get("/audit/records", params={"limit": 0})
        bad_limits = admin.put("/admin/teams/cardiology/quotas", json={"requests_per_minute": -1})
        models = user.get("/v1/models")
    for status, response in responses.items():
        assert response.status_code == status and set(response.json()["error"]) == {"message", "type", "param", "code"}
    for response in (bad_query, bad_limits):  # FastAPI's own validation: 400 in OpenAI's shape, never 422
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_value", response.text
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == [MODEL]


def ward_cli(stack, *args: str) -> subprocess.CompletedProcess:
    key = stack["gateway"].data_dir / "audit" / "checkpoint-key.pem"
    return subprocess.run(
        [sys.executable, "-m", "ward", *args, "--database-url", stack["database_url"], "--signing-key", str(key)],
        capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=60,
    )


def test_the_model_policy_and_scheduling_set_on_the_host_govern_the_running_gateway(stack):
    with http(stack, "genetics") as user, http(stack, "genetics_admin") as team_admin, http(stack, "admin") as admin:
        assert user.post("/v1/chat/completions", json=chat()).status_code == 200
        done = ward_cli(stack, "approvals", "allow", "genetics", "a-model-under-review")
        assert done.returncode == 0, done.stderr
        assert wait_until(lambda: user.post("/v1/chat/completions", json=chat()).status_code == 403, 5)
        refused = user.post("/v1/chat/completions", json=chat())
        assert refused.json()["error"]["code"] == "model_not_allowed" and user.get("/v1/models").json()["data"] == []
        assert team_admin.delete("/admin/teams/genetics/models").status_code == 403  # not its own to lift
        assert admin.delete("/admin/teams/genetics/models").status_code == 200
        assert user.post("/v1/chat/completions", json=chat()).status_code == 200  # this gateway: at once
        done = ward_cli(stack, "quotas", "set", "genetics", "--priority", "-3", "--weight", "2")
        assert done.returncode == 0, done.stderr
        scheduling = team_admin.get("/admin/teams/genetics/scheduling").json()
        raised = team_admin.put("/admin/teams/genetics/scheduling", json={"priority": -10})
    assert scheduling["priority"] == -3 and scheduling["weight"] == 2.0 and scheduling["source"]["priority"] == "admin"
    assert raised.status_code == 403
    actions = [r["data"]["action"] for r in audit_records(stack, kind="admin", team="genetics")]
    assert actions == ["team.models", "team.models", "scheduling.set"]


def test_a_platform_admin_cannot_mint_an_oversight_key_and_its_reads_are_audited_with_a_request_id(stack):
    with http(stack, "admin") as admin, http(stack, "auditor") as auditor:
        refused = {role: admin.post("/admin/teams/platform/keys", json={"role": role})
                   for role in ("auditor", "security_officer")}
        read = admin.get("/admin/teams/platform/keys")
        records = {r["id"]: r for r in auditor.get("/audit/records", params={"kind": "request", "limit": 1000}).json()["data"]}
        access = auditor.get("/audit/records", params={"kind": "access", "limit": 1000}).json()["data"]
    for role, response in refused.items():
        assert response.status_code == 403, (role, response.text)
        assert response.json()["error"]["code"] == "separation_of_duties"
        record = records[response.headers["x-request-id"]]  # the attempt is evidence
        assert (record["status"], record["http_status"]) == ("rejected", 403)
    assert read.status_code == 200
    [entry] = [r for r in access if r["request_id"] == read.headers["x-request-id"]]
    assert (entry["data"]["action"], entry["http_status"]) == ("admin.read", 200)


def test_every_request_has_exactly_one_record_and_ward_audit_verify_passes(stack):
    from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(stack["database_url"])
    try:
        scope = ReadScope(teams=None, content=True, kinds=None)
        everything = list(AuditReader(engine).iter_records(RecordFilter(), scope, through_seq=10**12))
    finally:
        engine.dispose()
    records = [r for r in everything if r["kind"] == "request"]
    # Admin and auditor answers that succeeded are in the log as the entries naming their request id:
    # an `access` entry for a read, an `admin` entry for a change.
    named = {r["request_id"]: r for r in everything if r["kind"] in ("access", "admin") and r["request_id"]}
    ledger = stack["ledger"]
    statuses = dict(ledger.statuses)
    assert len(statuses) == len(ledger.ids)  # every answer had its own id
    answered_by_admin_api = {rid: status for rid, status in statuses.items() if rid not in {r["id"] for r in records}}
    assert answered_by_admin_api and all(status < 400 and rid in named for rid, status in answered_by_admin_api.items())
    # one request record per other answer: none missing, none extra
    assert {r["id"]: r["http_status"] for r in records} == {rid: s for rid, s in statuses.items() if rid not in answered_by_admin_api}
    assert {401, 403, 429, 400, 404} <= {status for _, status in ledger.statuses}
    assert all(r["complete"] for r in records)

    metrics = httpx.get(f"{stack['gateway'].url}/metrics").text
    assert 'ward_quota_admitted_total{mode="exact",team="cardiology"} 3.0' in metrics

    key = stack["gateway"].data_dir / "audit" / "checkpoint-key.pem"
    verify = subprocess.run(
        [sys.executable, "-m", "ward", "audit", "verify", "--database-url", stack["database_url"], "--signing-key", str(key)],
        capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "OK: the audit log is intact" in verify.stdout
