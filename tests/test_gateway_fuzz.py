"""/openapi.json and a bounded schemathesis run over every route of a real governed gateway.

One ``ward gateway`` process (identity, quotas, the audit log on a temporary SQLite database) in
front of fake generate and embed workers. Every operation of the served schema is fuzzed with
valid and invalid inputs, once with a user's key, once with a platform admin's and once with an
auditor's: no answer may be a 5xx, and every answer must conform to the schema (status code, media
type, body). Keys are revocable by the fuzzer (``DELETE /admin/keys/{id}`` with made-up ids), so
each role's key is one the fuzzer cannot guess.
"""
from __future__ import annotations

import collections
import os

import httpx
import pytest
import schemathesis
from e2e_support import ProcessStack, make_keys
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

MODEL = "fake-chat"
EMBED_MODEL = "fake-embed"
KEYS = {"user": ("fuzz", "user"), "admin": ("platform", "platform_admin"), "auditor": ("platform", "auditor")}
# Per role and generation mode: about 650 requests in all. WARD_FUZZ_EXAMPLES=200 explores further.
EXAMPLES_PER_OPERATION = int(os.environ.get("WARD_FUZZ_EXAMPLES", "5"))
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz")
    procs = ProcessStack(workdir)
    try:
        generate = procs.start_fake_worker("fake-generate", MODEL, "--max-model-len", "4096")
        embed = procs.start_fake_worker("fake-embed", EMBED_MODEL, "--task", "embed")
        (workdir / "gateway-0").mkdir()
        keys = make_keys(f"sqlite:///{workdir / 'gateway-0' / 'ward.db'}", KEYS)
        gateway = procs.start_gateway({MODEL: [generate.address], EMBED_MODEL: [embed.address]})
        gateway.keys = keys
        yield gateway
    finally:
        procs.close()


def test_openapi_json_documents_wards_routes_with_openai_shaped_errors(gateway):
    schema = httpx.get(f"{gateway.url}/openapi.json", timeout=10).json()
    paths = schema["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/admin/teams",
                 "/admin/teams/{team}/quotas", "/audit/records", "/healthz", "/readyz"):
        assert path in paths, path
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert "422" not in chat["responses"] and "400" in chat["responses"]
    assert chat["security"] == [{"bearer": []}] and paths["/healthz"]["get"]["security"] == []
    request = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert request["max_tokens"]["anyOf"][0]["type"] == "integer" and request["stream"]["type"] == "boolean"
    team = paths["/admin/teams/{team}/quotas"]["put"]["parameters"][0]["schema"]
    assert team["maxLength"] == 64 and team["pattern"].startswith("^[a-z0-9]")


def test_an_operator_can_turn_the_schema_off(tmp_path):
    procs = ProcessStack(tmp_path)
    try:
        worker = procs.start_fake_worker("fake-generate", MODEL)
        gateway = procs.start_gateway({MODEL: [worker.address]}, config={"openapi": False})
        response = httpx.get(f"{gateway.url}/openapi.json", timeout=10)
        assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"
    finally:
        procs.close()


@pytest.mark.slow
def test_fuzzing_every_route_with_user_admin_and_auditor_keys_finds_no_5xx(gateway):
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    statuses: collections.Counter = collections.Counter()
    for role in ("user", "admin", "auditor"):
        headers = {"authorization": f"Bearer {gateway.keys[role]}"}
        for operation in operations:
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                fuzz_operation(gateway.url, operation, mode, headers, statuses)
    # The run reached the routes' logic, not only their front doors.
    assert statuses[200] >= 30 and statuses[400] >= 100 and statuses[403] >= 30 and statuses[404] >= 30, statuses
    assert not [status for status in statuses if status >= 500], statuses


def fuzz_operation(url: str, operation, mode, headers: dict, statuses: collections.Counter) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode is schemathesis.GenerationMode.NEGATIVE else [])

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,  # the same cases every run: CI never fails by luck; raise the count to explore
    )
    def run(case) -> None:
        response = case.call(base_url=url, headers=headers, timeout=30)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
        case.validate_response(response, checks=checks, headers=headers)

    try:
        run()
    except Unsatisfiable:
        assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to get wrong: no parameters, no body
