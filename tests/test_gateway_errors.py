"""Every error leaves in OpenAI's shape with the right status; malformed bodies never cause a 5xx."""

from __future__ import annotations

import asyncio
import json
import threading

import grpc
import pytest
from fake_worker import FakeConfig, FakeWorker, running_gateway
from gateway.settings import RoutingSettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def gw():
    async with (
        FakeWorker(FakeConfig(model=MODEL, max_model_len=32)) as worker,
        running_gateway({MODEL: [worker]}, settings={"max_request_bytes": 64 * 1024}) as harness,
    ):
        harness.worker = worker
        yield harness


def assert_openai_error(r, status: int, *, code=None, param=None):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    assert "Traceback" not in r.text
    return body["error"]


async def test_malformed_json_is_400_not_422(gw):
    for raw in (b"{", b"not json", b"\xff\xfe", b'{"model": "fake-chat", "messages": [}'):
        r = await gw.client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert_openai_error(r, 400, code="invalid_json")


async def test_empty_body_and_non_object_bodies_are_400(gw):
    assert_openai_error(await gw.client.post("/v1/chat/completions", content=b""), 400)
    for body in ([], "x", 3, None):
        assert_openai_error(await gw.client.post("/v1/chat/completions", json=body), 400)


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 10**30}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2**40}, "max_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"top_logprobs": 30, "logprobs": True}, "top_logprobs"),
        ({"seed": 2**70}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"priority": 2**40}, "priority"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
        ({"model": ""}, "model"),
        # arguments are a JSON object (OpenAI's rule too): a schema that excludes one is refused
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": ["array", "null"]}}}]},
         "tools"),
    ],
)
async def test_invalid_fields_are_400_with_the_param(gw, fields, param):
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **fields})
    assert_openai_error(r, 400, param=param)
    assert gw.worker.servicer.generate_requests == []


async def test_cross_field_rules_are_400(gw):
    for fields in (
        {"top_logprobs": 2},  # without logprobs
        {"stream_options": {"include_usage": True}},  # without stream
        {"min_tokens": 5, "max_tokens": 2},
        {"tools": [{"type": "function", "function": {"name": "f"}}],
         "tool_choice": {"type": "function", "function": {"name": "g"}}},  # not among the tools
        {"tool_choice": "required"},  # without tools
        {"response_format": {"type": "json_schema"}},
    ):
        r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **fields})
        assert_openai_error(r, 400)


TOOL_F = [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize("route, fields", [
    ("/v1/chat/completions", {"tools": TOOL_F, "tool_choice": {"type": "function", "function": {"name": "f"}},
                              "min_tokens": 2}),
    ("/v1/completions", {"response_format": {"type": "json_object"}, "min_tokens": 2}),
])
async def test_min_tokens_beside_a_grammar_is_a_400(gw, route, fields):
    # the grammar may allow only the end before min_tokens are out: the two cannot both hold
    body = {"model": MODEL, **fields, **({"messages": USER} if "chat" in route else {"prompt": "hi"})}
    r = await gw.client.post(route, json=body)
    assert "min_tokens" in assert_openai_error(r, 400)["message"]
    assert gw.worker.servicer.generate_requests == []


@pytest.mark.parametrize("route, fields", [
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}, "stop": ", "}),
    ("/v1/completions", {"response_format": {"type": "json_object"}, "stop_token_ids": [5]}),
])
async def test_stops_beside_a_grammar_are_accepted_as_at_openai(gw, route, fields):
    # past validation: this fake worker then answers that it cannot constrain decoding at all
    body = {"model": MODEL, **fields, **({"messages": USER} if "chat" in route else {"prompt": "hi"})}
    r = await gw.client.post(route, json=body)
    assert assert_openai_error(r, 400)["code"] == "structured_output_unavailable"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"response_format": {"type": "json_schema"}}, "Missing required parameter: 'response_format.json_schema'."),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "wat"}}}},
         "Invalid value for 'response_format.json_schema': "),
        ({"messages": [{"role": "user", "content": 5}]}, "Invalid type for 'messages.0.content': "),
    ],
)
async def test_error_messages_name_the_field_as_sent_without_union_tags(gw, fields, message):
    # pydantic puts the union member it tried ("str", a response_format's type) in the error's path;
    # the caller would read "response_format.json_schema.json_schema" as a field to add
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, **fields})
    assert assert_openai_error(r, 400)["message"].startswith(message)


async def test_a_tokenized_prompts_bad_item_is_named_by_its_index(gw):
    r = await gw.client.post("/v1/completions", json={"model": MODEL, "prompt": [1, "a"]})
    assert assert_openai_error(r, 400, param="prompt")["message"].startswith("Invalid type for 'prompt.1': ")


async def test_missing_required_field_is_400(gw):
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL})
    assert_openai_error(r, 400, param="messages", code="missing_required_parameter")


async def test_missing_or_wrong_api_key_is_401_before_the_body_is_read(gw):
    r = await gw.client.post("/v1/chat/completions", content=b"{", headers={"authorization": ""})
    assert_openai_error(r, 401, code="missing_api_key")
    assert r.headers["www-authenticate"] == 'Bearer realm="ward"'  # RFC 6750: no error code without a credential
    r = await gw.client.post("/v1/chat/completions", json={}, headers={"authorization": "Bearer sk-wrong-key"})
    assert_openai_error(r, 401, code="invalid_api_key")
    r = await gw.client.get("/v1/models", headers={"authorization": "Basic abc"})
    assert_openai_error(r, 401)


async def test_unknown_model_is_404(gw):
    r = await gw.client.post("/v1/chat/completions", json={"model": "no-such-model", "messages": USER})
    assert_openai_error(r, 404, code="model_not_found", param="model")
    assert_openai_error(await gw.client.get("/v1/models/no-such-model"), 404, code="model_not_found")


async def test_unknown_route_and_wrong_method_keep_the_shape(gw):
    error = assert_openai_error(await gw.client.get("/v1/nothing-here"), 404)
    assert error["message"] == "Invalid URL (GET /v1/nothing-here)"
    assert_openai_error(await gw.client.get("/v1/chat/completions"), 405)


async def test_over_long_prompt_is_400_context_length_exceeded_streamed_or_not(gw):
    long = [{"role": "user", "content": "word " * 40}]
    for stream in (False, True):
        r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": long, "stream": stream})
        error = assert_openai_error(r, 400, code="context_length_exceeded", param="messages")
        assert "maximum context length" in error["message"]
    r = await gw.client.post("/v1/completions", json={"model": MODEL, "prompt": "w " * 40})
    assert_openai_error(r, 400, code="context_length_exceeded", param="prompt")


async def test_body_over_the_size_limit_is_413(gw):
    r = await gw.client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]}
    )
    assert_openai_error(r, 413, code="request_too_large")


async def test_no_ready_worker_is_503_with_retry_after(gw):
    gw.worker.servicer.ready = False
    for _ in range(50):
        if not gw.pool.is_ready(MODEL):
            break
        await asyncio.sleep(0.02)
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert_openai_error(r, 503, code="no_ready_worker")
    assert r.headers["retry-after"] == "1"
    assert (await gw.client.get("/readyz")).status_code == 503


async def test_worker_internal_error_is_500_without_its_details(gw):
    gw.worker.servicer.fail_generate = (grpc.StatusCode.INTERNAL, "CUDA error at kernel.cu:42 secret", None)
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    error = assert_openai_error(r, 500, code="worker_error")
    assert "secret" not in error["message"] and "kernel" not in r.text


async def test_worker_invalid_argument_is_400_with_its_message_and_code(gw):
    gw.worker.servicer.fail_generate = (
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k exceeds the vocabulary",
        "invalid_value",
    )
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True})
    error = assert_openai_error(r, 400, code="invalid_value")
    assert error["message"] == "top_k exceeds the vocabulary"


async def test_worker_overloaded_is_503(gw):
    gw.worker.servicer.fail_generate = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", None)
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert_openai_error(r, 503, code="overloaded")


# -- fuzz: malformed and adversarial bodies never produce a 5xx -------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_field_values = {
    "model": _json,
    "messages": st.one_of(
        st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "x", 3]), "content": _json}),
            max_size=3,
        ),
        _json,
    ),
    "prompt": st.one_of(st.lists(st.integers(-5, 2**33), max_size=4), _json),
    "input": _json,
    "n": st.one_of(st.integers(-1, 3), _json),
    "temperature": st.one_of(st.floats(-1, 3), _json),
    "top_p": _json,
    "max_tokens": st.one_of(st.integers(-3, 2**40), _json),
    "stop": _json,
    "seed": _json,
    "logprobs": _json,
    "top_logprobs": st.one_of(st.integers(-1, 25), _json),
    "stream": st.one_of(st.booleans(), _json),
    "stream_options": _json,
    "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), _json),
    "dimensions": st.one_of(st.integers(-1, 10), _json),
    "top_k": _json,
    "priority": _json,
    "min_tokens": st.one_of(st.integers(-1, 5), _json),
    "tools": _json,
}
EMBED = "fake-embed"
_VALID = {
    "/v1/chat/completions": {"model": MODEL, "messages": USER, "max_tokens": 3},
    "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 3},
    "/v1/embeddings": {"model": EMBED, "input": "hi"},
}


@st.composite
def _requests(draw):
    """A path and a body: a valid body with fields changed or dropped, or arbitrary JSON or bytes."""
    path = draw(st.sampled_from(sorted(_VALID)))
    kind = draw(st.sampled_from(["mutated", "mutated", "json", "bytes"]))
    if kind == "mutated":
        body = dict(_VALID[path])
        for key in draw(st.sets(st.sampled_from(sorted(body)), max_size=1)):
            del body[key]
        for key in draw(st.lists(st.sampled_from(sorted(_field_values)), max_size=2, unique=True)):
            body[key] = draw(_field_values[key])
        return path, json.dumps(body).encode()
    if kind == "json":
        return path, json.dumps(draw(_json)).encode()
    return path, draw(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))


def test_fuzzed_bodies_never_cause_a_5xx():
    # The gateway, its workers and their health polls run on a loop of their own thread, never
    # stopped between examples: a poll whose gRPC deadline passed while the loop stood still (the
    # next example being drawn on a slow box) would mark a worker unready, and its requests 503.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-gateway", daemon=True)
    thread.start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    worker = FakeWorker(FakeConfig(model=MODEL, max_model_len=64))
    embedder = FakeWorker(FakeConfig(model=EMBED, task="embed"))
    # Even on its own loop a poll can miss a 0.5 s deadline when the box is saturated (CI runs two
    # test processes on two cores): this test is about bodies, not health, so its polls are patient.
    patient = RoutingSettings(poll_interval_s=0.5, poll_timeout_s=15.0, dead_after_s=60.0)
    gateway = running_gateway({MODEL: [worker], EMBED: [embedder]}, routing=patient)

    async def start():
        await worker.start()
        await embedder.start()
        return await gateway.__aenter__()

    harness = run(start())

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=_requests())
    def check(request):
        path, body = request
        r = run(harness.client.post(path, content=body, headers={"content-type": "application/json"}))
        assert r.status_code < 500, (path, body, r.status_code, r.text)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}

    statuses: dict[int, int] = {}
    try:
        check()
        assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0  # both valid and invalid bodies ran
    finally:
        run(gateway.__aexit__(None, None, None))
        run(worker.stop())
        run(embedder.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
