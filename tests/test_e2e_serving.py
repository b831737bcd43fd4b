"""The serving path end to end: the official ``openai`` client -> a real ``ward gateway`` process ->
real ``ward worker`` processes (the default generation and embedding models, on CPU) over gRPC.

One generation worker, one embedding worker and one gateway serve the whole module.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import struct

import httpx
import openai
import pytest
from e2e_support import EMBED_MODEL, GENERATE_MODEL, ProcessStack, chat_token_count, load_stats, make_keys, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CHAT = GENERATE_MODEL
NOTE = [{"role": "user", "content": "Summarise: the patient slept well and ate breakfast."}]
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    procs = ProcessStack(tmp_path_factory.mktemp("e2e-serving"))
    try:
        generate, embed = procs.workers_ready(("generate", "generate"), ("embed", "embed"))
        gateway = procs.start_gateway({CHAT: [generate.address], EMBED_MODEL: [embed.address]})
        keys = make_keys(gateway.database_url, {"user": ("radiology", "user")})
        yield {"url": gateway.url, "key": keys["user"], "worker": generate.address}
    finally:
        procs.close()


@pytest.fixture
def client(stack):
    with openai.OpenAI(base_url=stack["url"] + "/v1", api_key=stack["key"], max_retries=0, timeout=120) as c:
        yield c


def raw_post(stack, path: str, body: bytes, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key or stack['key']}", "content-type": "application/json"}
    return httpx.post(f"{stack['url']}{path}", content=body, headers=headers, timeout=120)


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


# ---- the happy paths ------------------------------------------------------------------------------
def test_models_list_names_both_models_and_the_context_length(client):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {CHAT, EMBED_MODEL}
    assert client.models.retrieve(CHAT).model_extra["max_model_len"] == 1024


def test_streamed_chat_concatenates_to_the_non_streamed_text_and_usage_matches_tokenize(client, stack):
    request = dict(model=CHAT, messages=NOTE, seed=11, temperature=0.9, max_tokens=12, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**request)
    chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content and streamed
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == whole.usage.completion_tokens == 12
    prompt_tokens = chat_token_count(stack["worker"], CHAT, NOTE)
    assert whole.usage.prompt_tokens == usage.prompt_tokens == prompt_tokens
    assert whole.usage.total_tokens == prompt_tokens + 12


def test_completions_streamed_and_not_agree_with_logprobs(client):
    request = dict(model=CHAT, prompt="The ward round starts at", max_tokens=6, seed=5, temperature=0.7, logprobs=2)
    whole = client.completions.create(**request, extra_body={"ignore_eos": True})
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 6
    assert len(whole.choices[0].logprobs.tokens) == 6
    lp = whole.choices[0].logprobs
    # the two likeliest, and the sampled token when it is not one of them
    assert all(len(top) in (2, 3) and token in top for token, top in zip(lp.tokens, lp.top_logprobs, strict=True))
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(**request, stream=True, extra_body={"ignore_eos": True})
        if c.choices
    )
    assert streamed == whole.choices[0].text


def test_embeddings_float_and_base64_agree(client):
    floats = client.embeddings.create(model=EMBED_MODEL, input=["chest pain on exertion", "no pain"])
    assert [d.index for d in floats.data] == [0, 1] and floats.usage.prompt_tokens > 0
    first = floats.data[0].embedding
    assert len(first) == 384 and math.isclose(math.sqrt(sum(v * v for v in first)), 1.0, rel_tol=1e-3)
    assert first != floats.data[1].embedding
    packed = client.embeddings.create(model=EMBED_MODEL, input=["chest pain on exertion"], encoding_format="base64")
    decoded = struct.unpack("<384f", base64.b64decode(packed.data[0].embedding))
    assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(decoded, first))


def test_n_2_gives_two_choices_and_counts_both(client):
    two = client.chat.completions.create(model=CHAT, messages=NOTE, n=2, seed=3, temperature=1.0, max_tokens=6,
                                         extra_body={"ignore_eos": True})
    assert [c.index for c in two.choices] == [0, 1]
    assert all(c.message.content and c.finish_reason == "length" for c in two.choices)
    assert two.usage.completion_tokens == 12


def test_max_tokens_1_generates_exactly_one_token(client):
    one = client.chat.completions.create(model=CHAT, messages=NOTE, max_tokens=1, extra_body={"ignore_eos": True})
    assert one.usage.completion_tokens == 1 and one.choices[0].finish_reason == "length"


def test_stop_string_ends_the_text_before_it(client):
    full = client.chat.completions.create(model=CHAT, messages=NOTE, max_tokens=16, **GREEDY,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[2]
    stopped = client.chat.completions.create(model=CHAT, messages=NOTE, max_tokens=16, stop=[stop], **GREEDY,
                                             extra_body={"ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == full[: full.index(stop)]


def test_logprobs_with_top_logprobs(client):
    answer = client.chat.completions.create(model=CHAT, messages=NOTE, max_tokens=5, logprobs=True, top_logprobs=3,
                                            **GREEDY, extra_body={"ignore_eos": True})
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 5
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        # greedy: the chosen token is the most likely one
        assert token.top_logprobs[0].token == token.token
        assert math.isclose(token.top_logprobs[0].logprob, token.logprob, abs_tol=1e-4)


def test_the_same_seed_gives_the_same_text_through_http(client):
    def sample(seed: int) -> str:
        return client.chat.completions.create(model=CHAT, messages=NOTE, seed=seed, temperature=1.0, max_tokens=10,
                                              extra_body={"ignore_eos": True}).choices[0].message.content

    assert sample(1234) == sample(1234)
    assert len({sample(1), sample(2), sample(3)}) >= 2


# ---- errors ----------------------------------------------------------------------------------------
def test_invalid_parameters_and_malformed_json_are_400(client, stack):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=CHAT, messages=NOTE, temperature=5)
    assert err.value.status_code == 400 and err.value.body["param"] == "temperature"
    assert_openai_error(raw_post(stack, "/v1/chat/completions", b'{"model": '), 400, "invalid_json")
    assert_openai_error(raw_post(stack, "/v1/chat/completions", b'{"model": "x"}'), 400, "missing_required_parameter")


def test_a_wrong_key_is_401_with_a_bearer_challenge(stack):
    response = raw_post(stack, "/v1/chat/completions", b"{}", key="ward-0123456789abcdef." + "x" * 43)
    assert_openai_error(response, 401)
    assert response.headers["www-authenticate"].startswith('Bearer realm="ward"')
    with openai.OpenAI(base_url=stack["url"] + "/v1", api_key="not-a-key", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-unknown", messages=NOTE)
    assert err.value.code == "model_not_found"


def test_an_over_long_prompt_is_400_context_length_exceeded_even_when_streaming(client, stack):
    long_note = [{"role": "user", "content": "the patient is stable " * 400}]  # > 1,024 tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=CHAT, messages=long_note, max_tokens=4)
    assert err.value.code == "context_length_exceeded"
    response = raw_post(stack, "/v1/chat/completions",
                        json.dumps({"model": CHAT, "messages": long_note, "stream": True}).encode())
    assert_openai_error(response, 400, "context_length_exceeded")


# Cheap requests only: integers are tiny or huge (never a long generation) and token budgets stay
# at most 1. (An explicit null max_tokens on /v1/completions means "up to the context length".)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(2**31, 2**70), st.floats(allow_nan=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=6)
BUDGET_KEYS = ("max_tokens", "max_completion_tokens")
BASES = {
    "/v1/chat/completions": {"model": CHAT, "messages": NOTE, "max_tokens": 1, "max_completion_tokens": 1},
    "/v1/completions": {"model": CHAT, "prompt": "vital signs", "max_tokens": 1},
    "/v1/embeddings": {"model": EMBED_MODEL, "input": "vital signs"},
}


def budget_values(path: str) -> st.SearchStrategy:
    small_or_huge = st.one_of(st.integers(-3, 1), st.integers(2**31, 2**70), st.text(max_size=5), st.booleans())
    # chat keeps the other budget at 1 when one is null
    return st.one_of(st.none(), small_or_huge) if path == "/v1/chat/completions" else small_or_huge


@st.composite
def request_bodies(draw) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(BASES)))
    base = dict(BASES[path])
    kind = draw(st.sampled_from(["field", "field", "bytes", "json"]))
    if kind == "bytes":
        return path, draw(st.binary(max_size=64))
    if kind == "json":
        return path, json.dumps(draw(JSON_VALUES)).encode()
    key = draw(st.sampled_from([*sorted(base), "n", "stop", "logprobs", "top_logprobs", "temperature", "seed",
                                "stream", "encoding_format", "dimensions", "top_p", "presence_penalty"]))
    base[key] = draw(budget_values(path) if key in BUDGET_KEYS else JSON_VALUES)
    return path, json.dumps(base).encode()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=request_bodies())
def test_malformed_bodies_never_get_a_5xx(stack, case):
    path, body = case
    response = raw_post(stack, path, body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        assert_openai_error(response, response.status_code)


# ---- cancellation and concurrency ---------------------------------------------------------------------
def test_cancelling_mid_stream_frees_the_worker_kv_cache(client, stack):
    assert wait_until(lambda: load_stats(stack["worker"]).num_running == 0, 10)
    idle = load_stats(stack["worker"]).kv_blocks_used
    stream = client.chat.completions.create(model=CHAT, messages=NOTE, max_tokens=500, stream=True,
                                            extra_body={"ignore_eos": True})
    for _, _ in zip(range(4), stream):
        pass
    busy = load_stats(stack["worker"])
    assert busy.num_running == 1 and busy.kv_blocks_used > idle
    stream.close()
    assert wait_until(lambda: load_stats(stack["worker"]).num_running == 0, 5)
    assert load_stats(stack["worker"]).kv_blocks_used == idle


def test_32_concurrent_streams_all_complete_correctly(client, stack):
    prompts = [[{"role": "user", "content": f"Name one thing a nurse checks, number {i}."}] for i in range(4)]
    params = dict(model=CHAT, max_tokens=8, **GREEDY, extra_body={"ignore_eos": True})
    expected = [client.chat.completions.create(messages=p, **params).choices[0].message.content for p in prompts]

    async def run() -> list[tuple[str, list[str], int]]:
        async with openai.AsyncOpenAI(base_url=stack["url"] + "/v1", api_key=stack["key"], max_retries=0,
                                      timeout=180) as aclient:

            async def one(i: int) -> tuple[str, list[str], int]:
                stream = await aclient.chat.completions.create(messages=prompts[i % 4], stream=True,
                                                               stream_options={"include_usage": True}, **params)
                chunks = [c async for c in stream]
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
                return text, finish, chunks[-1].usage.completion_tokens

            return await asyncio.gather(*(one(i) for i in range(32)))

    results = asyncio.run(run())
    assert len(results) == 32
    for i, (text, finish, completion_tokens) in enumerate(results):
        assert (text, finish, completion_tokens) == (expected[i % 4], ["length"], 8), i
    assert wait_until(lambda: load_stats(stack["worker"]).num_running == 0, 5)
