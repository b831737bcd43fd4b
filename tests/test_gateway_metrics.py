"""Prometheus /metrics on the gateway: request counts by route, model and status; latency and
token series; bounded label values."""

from __future__ import annotations

import pytest
from fake_worker import FakeConfig, FakeWorker, running_gateway
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
USER = [{"role": "user", "content": "one two"}]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_requests_tokens_and_latencies(tmp_path):
    async with FakeWorker(FakeConfig(model=MODEL)) as worker, running_gateway({MODEL: [worker]}) as gw:
        for _ in range(2):
            await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
        await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True})
        await gw.client.post("/v1/chat/completions", json={"model": "made-up-name", "messages": USER})
        await gw.client.post("/v1/completions", json={"model": MODEL, "prompt": "x", "temperature": 9})
        r = await gw.client.get("/metrics", headers={"authorization": ""})  # no key needed
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        m = samples(r.text)
    chat = (("model_name", MODEL), ("route", "/v1/chat/completions"), ("status", "200"))
    assert m[("ward_gateway_requests_total", chat)] == 3
    unknown = (("model_name", ""), ("route", "/v1/chat/completions"), ("status", "404"))
    assert m[("ward_gateway_requests_total", unknown)] == 1  # client-chosen names never become labels
    assert not any("made-up-name" in str(key) for key in m)
    invalid = (("model_name", ""), ("route", "/v1/completions"), ("status", "400"))
    assert m[("ward_gateway_requests_total", invalid)] == 1
    model = (("model_name", MODEL),)
    prompt_tokens = 1 + 2 + 1  # role marker, two words, generation prompt
    assert m[("ward_gateway_prompt_tokens_total", model)] == 3 * prompt_tokens
    assert m[("ward_gateway_generation_tokens_total", model)] == 3 * 6
    assert m[("ward_gateway_time_to_first_token_seconds_count", model)] == 3
    team_series = [key for key in m if key[0] == "ward_gateway_team_time_to_first_token_seconds_count"]
    assert len(team_series) == 1 and m[team_series[0]] == 3  # the caller's team, the same three requests
    assert dict(team_series[0][1])["model_name"] == MODEL and dict(team_series[0][1])["team"]
    assert m[("ward_gateway_inter_token_latency_seconds_count", model)] == 3 * 5
    assert (
        m[
            (
                "ward_gateway_e2e_request_latency_seconds_count",
                (("model_name", MODEL), ("route", "/v1/chat/completions")),
            )
        ]
        == 3
    )
    assert m[("ward_gateway_requests_in_flight", ())] == 0
    assert m[("ward_gateway_worker_ready", (("model_name", MODEL), ("worker", worker.address)))] == 1


async def test_request_counts_cover_the_openai_api_not_the_admin_routes():
    # Admin routes answer their successes outside the request lifecycle: counting only their failures
    # would make an error-rate alert read 100% for the model_name="" series.
    from fastapi import APIRouter

    from gateway.http.errors import InvalidRequest

    admin = APIRouter(prefix="/admin")

    @admin.get("/ok")
    async def ok() -> dict:
        return {"ok": True}

    @admin.get("/refused")
    async def refused() -> dict:
        raise InvalidRequest("no")

    async with FakeWorker(FakeConfig(model=MODEL)) as worker, running_gateway({MODEL: [worker]}, routers=[admin]) as gw:
        assert (await gw.client.get("/admin/ok")).status_code == 200
        assert (await gw.client.get("/admin/refused")).status_code == 400
        assert (await gw.client.get("/v1/models")).status_code == 200
        assert (await gw.client.get("/v1/no-such-route")).status_code == 404
        m = samples((await gw.client.get("/metrics")).text)
    routes = {dict(labels)["route"] for name, labels in m if name == "ward_gateway_requests_total"}
    assert routes == {"/v1/models", "unmatched"}
