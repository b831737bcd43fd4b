"""POST /v1/completions: prompt forms, choice numbering, the legacy logprobs format, streaming."""

from __future__ import annotations

import grpc
import pytest
from fake_worker import TEAM, FakeConfig, FakeWorker, parse_sse, running_gateway

from gateway.serving.logprobs import CompletionLogprobs
from proto.ward.worker.v1 import worker_pb2 as pb

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"


@pytest.fixture
async def gw():
    async with FakeWorker(FakeConfig(model=MODEL)) as worker, running_gateway({MODEL: [worker]}) as harness:
        harness.worker = worker
        yield harness


async def complete(gw, **fields):
    return await gw.client.post("/v1/completions", json={"model": MODEL, **fields})


async def test_text_prompt_returns_a_text_completion_with_usage(gw):
    r = await complete(gw, prompt="the patient is", seed=1)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["text"] and choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 6,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    sent = gw.worker.servicer.generate_requests[-1]
    assert sent.prompt.text == "the patient is"


async def test_default_max_tokens_is_openais_16(gw):
    await complete(gw, prompt="x")
    assert gw.worker.servicer.generate_requests[-1].params.max_tokens == 16
    # An explicit null is OpenAI's "not given" too, not "up to the context length".
    r = await complete(gw, prompt="x", max_tokens=None, ignore_eos=True)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
    assert gw.worker.servicer.generate_requests[-1].params.max_tokens == 16


async def test_the_prompt_goes_with_the_teams_cache_salt(gw):
    await complete(gw, prompt="x")
    assert gw.worker.servicer.generate_requests[-1].cache_salt == f"team:{TEAM}"


async def test_token_id_prompt_goes_to_the_worker_as_ids(gw):
    r = await complete(gw, prompt=[5, 6, 7, 8], seed=1)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 4
    assert list(gw.worker.servicer.generate_requests[-1].prompt.token_ids.ids) == [5, 6, 7, 8]


async def test_several_prompts_number_choices_prompt_by_prompt(gw):
    r = await complete(gw, prompt=["a b", "c d e"], n=2, seed=9)
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["prompt_tokens"] == 2 + 3
    assert body["usage"]["completion_tokens"] == 4 * 6
    sent = gw.worker.servicer.generate_requests[-2:]
    assert sorted(s.prompt.text for s in sent) == ["a b", "c d e"]
    assert len({s.request_id for s in sent}) == 2


async def test_several_tokenized_prompts(gw):
    body = (await complete(gw, prompt=[[1, 2], [3]], seed=1)).json()
    assert len(body["choices"]) == 2 and body["usage"]["prompt_tokens"] == 3


async def test_legacy_logprobs_format(gw):
    body = (await complete(gw, prompt="hello", seed=3, logprobs=2)).json()
    [choice] = body["choices"]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == choice["text"]
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["top_logprobs"]) == 6
    assert all(len(top) == 2 and token in top for token, top in zip(lp["tokens"], lp["top_logprobs"], strict=True))
    offsets = [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert lp["text_offset"] == offsets


def _partial_character_tokens() -> list[pb.TokenLogprob]:
    """Tokens of " é 你好!" as a byte-level tokenizer splits them: "é" across two tokens and "你好" across
    three, each part alone decoding to U+FFFD (the worker sends the bytes each token stands for)."""
    pieces = [b" ", b"\xc3", b"\xa9 ", b"\xe4\xbd", b"\xa0\xe5", b"\xa5\xbd!"]
    return [pb.TokenLogprob(token_id=i, token=raw.decode("utf-8", "replace"), logprob=-0.5, token_bytes=raw)
            for i, raw in enumerate(pieces)]


def test_text_offsets_of_tokens_holding_part_of_a_character_point_into_the_returned_text():
    # each offset is where the token's contribution starts in the text: the character it begins or
    # continues, never past the text (counting each U+FFFD of the tokens ran past it)
    tokens = _partial_character_tokens()
    text = b"".join(t.token_bytes for t in tokens).decode()
    assert text == " é 你好!"
    whole = CompletionLogprobs().format(tokens)["text_offset"]
    assert whole == [0, 1, 1, 3, 3, 4]
    assert all(0 <= o < len(text) for o in whole)
    streamed = CompletionLogprobs()  # one chunk per token: the offsets run on across chunks
    assert [o for t in tokens for o in streamed.format([t])["text_offset"]] == whole


async def test_legacy_top_logprobs_always_hold_the_sampled_token(gw):
    # OpenAI: "the API will always return the logprob of the sampled token", so up to logprobs + 1
    # entries; with logprobs=0 the sampled token alone (vLLM's answer too).
    lp = (await complete(gw, prompt="hello", seed=3, logprobs=0)).json()["choices"][0]["logprobs"]
    assert lp["top_logprobs"] == [{t: v} for t, v in zip(lp["tokens"], lp["token_logprobs"], strict=True)]


async def test_stream_of_text_completion_chunks(gw):
    whole = (await complete(gw, prompt="hello", seed=3, logprobs=1)).json()["choices"][0]
    r = await complete(gw, prompt="hello", seed=3, logprobs=1, stream=True, stream_options={"include_usage": True})
    events = parse_sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"text_completion"}
    text_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == whole["text"]
    streamed_offsets = [o for c in text_chunks for o in c["choices"][0]["logprobs"]["text_offset"]]
    assert streamed_offsets == whole["logprobs"]["text_offset"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


async def test_suffix_is_refused_not_ignored(gw):
    for fields in ({"suffix": "end"},):
        r = await complete(gw, prompt="x", **fields)
        assert r.status_code == 400, fields
        assert "not supported" in r.json()["error"]["message"]
    assert (await complete(gw, prompt="x", best_of=1)).status_code == 200


async def test_a_token_id_given_twice_in_logit_bias_is_refused_on_both_endpoints(gw):
    # "1" and "01" are one token: accepting both would let the last silently win
    for path, fields in (("/v1/completions", {"prompt": "x"}),
                         ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})):
        r = await gw.client.post(path, json={"model": MODEL, **fields, "logit_bias": {"1": 5, "01": 6}})
        assert r.status_code == 400, path
        error = r.json()["error"]
        assert error["param"] == "logit_bias" and error["code"] == "invalid_value"
        assert "'1'" in error["message"] and "'01'" in error["message"]
    assert gw.worker.servicer.generate_requests == []
    r = await complete(gw, prompt="x", logit_bias={"1": 5, "2": 6})
    assert r.status_code == 200 and dict(gw.worker.servicer.generate_requests[-1].params.logit_bias) == {1: 5, 2: 6}


async def test_token_ids_out_of_range_are_400_naming_prompt_from_the_gateway_or_the_worker(gw):
    r = await complete(gw, prompt=[5, 10**6])  # the gateway knows the vocabulary from ModelInfo
    error = r.json()["error"]
    assert r.status_code == 400 and (error["code"], error["param"]) == ("invalid_value", "prompt")
    assert error["message"].startswith("token ids out of range") and gw.worker.servicer.generate_requests == []
    # a worker's own refusal (the gateway had no vocabulary to check against) names the prompt too
    gw.worker.servicer.fail_generate = (grpc.StatusCode.INVALID_ARGUMENT, "token ids out of range [0, 9): [9]",
                                        "token_ids_out_of_range")
    r = await complete(gw, prompt=[5, 6])
    error = r.json()["error"]
    assert r.status_code == 400 and (error["code"], error["param"]) == ("invalid_value", "prompt")


async def test_best_of_must_cover_n_and_cannot_stream(gw):
    for fields in ({"best_of": 1, "n": 2}, {"best_of": 3, "stream": True}):
        r = await complete(gw, prompt="x", **fields)
        assert r.status_code == 400, fields


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([5, "six", 7], "Invalid type for 'prompt.1': expected an integer, but got a string instead."),
        (["a", 2], "Invalid type for 'prompt.1': expected a string, but got an integer instead."),
        ([[5], "x"], "Invalid type for 'prompt.1': expected an array, but got a string instead."),
        ([5, -1], "Invalid value for 'prompt.1': Input should be greater than or equal to 0"),
        ({"text": "x"}, "Invalid type for 'prompt': expected a string, but got an object instead."),
        ([], "Invalid value for 'prompt': prompt must not be empty"),
    ],
)
async def test_a_malformed_prompt_is_refused_at_the_item_its_form_gets_wrong(gw, prompt, message):
    # The prompt's shape picks the form it is checked as (text, texts, token ids, lists of token ids),
    # so the error names the offending item, and nothing reaches the worker.
    sent = len(gw.worker.servicer.generate_requests)
    r = await complete(gw, prompt=prompt)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["message"] == message and error["param"] == "prompt"
    assert len(gw.worker.servicer.generate_requests) == sent
