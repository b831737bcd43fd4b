"""POST /v1/chat/completions through the gateway to a fake worker: bodies, SSE format, parameters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fake_worker import TEAM, FakeConfig, FakeWorker, parse_sse, running_gateway

from gateway.protocol.chat import ChatCompletionRequest
from gateway.serving.chat import ChatFormatter
from gateway.serving.constraints import tool_plan
from gateway.serving.text_generation import ResponseMeta
from proto.ward.worker.v1 import worker_pb2 as pb

pytestmark = pytest.mark.anyio

MODEL = "fake-chat"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something nice"}]


@pytest.fixture
async def gw():
    async with FakeWorker(FakeConfig(model=MODEL)) as worker, running_gateway({MODEL: [worker]}) as harness:
        harness.worker = worker
        yield harness


async def chat(gw, **fields):
    return await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, **fields})


async def test_non_streamed_response_has_openai_shape_and_usage(gw):
    r = await chat(gw, seed=7)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-") and r.headers["x-request-id"] in body["id"]
    assert isinstance(body["created"], int) and body["model"] == MODEL
    assert body["system_fingerprint"].startswith("fp_")
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    usage = body["usage"]
    # the fake worker's chat template: one token per role marker and word, plus the generation prompt
    assert usage["prompt_tokens"] == 1 + 2 + 1 + 3 + 1
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_prompt_tokens_equal_the_workers_tokenize_count(gw):
    from proto.ward.worker.v1 import worker_pb2 as pb

    r = await chat(gw, seed=1)
    client = gw.pool.handles(MODEL)[0].client
    conversation = pb.Conversation(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES], add_generation_prompt=True
    )
    count = (await client.tokenize(pb.TokenizeRequest(model=MODEL, prompt=pb.Prompt(chat=conversation)))).count
    assert r.json()["usage"]["prompt_tokens"] == count


async def test_stream_is_openai_sse_with_role_content_finish_usage_and_done(gw):
    r = await chat(gw, seed=7, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    events = parse_sse(r.text)
    assert events[0]["id"] == "chatcmpl-" + r.headers["x-request-id"]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["created"] for c in chunks}) == 1
    assert all(c["system_fingerprint"].startswith("fp_") for c in chunks)
    first, *middle, finish, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["usage"] is None for c in chunks[:-1])  # include_usage: null until the last chunk
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in middle)
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6


async def test_stream_without_include_usage_has_no_usage_field(gw):
    events = parse_sse((await chat(gw, seed=2, stream=True)).text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in events[:-1])
    assert all(c["choices"] for c in events[:-1])


async def test_streamed_deltas_concatenate_to_the_non_streamed_text(gw):
    whole = (await chat(gw, seed=11, max_tokens=9, ignore_eos=True)).json()["choices"][0]["message"]["content"]
    events = parse_sse((await chat(gw, seed=11, max_tokens=9, ignore_eos=True, stream=True)).text)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1] if c["choices"])
    assert streamed == whole and len(whole.split()) == 9


async def test_same_seed_same_text_different_seed_different_text(gw):
    a = (await chat(gw, seed=5, temperature=1.0)).json()["choices"][0]["message"]["content"]
    b = (await chat(gw, seed=5, temperature=1.0)).json()["choices"][0]["message"]["content"]
    c = (await chat(gw, seed=6, temperature=1.0)).json()["choices"][0]["message"]["content"]
    assert a == b and a != c


async def test_n_2_returns_two_choices_and_streams_them_interleaved(gw):
    body = (await chat(gw, n=2, seed=3)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["message"]["content"] != body["choices"][1]["message"]["content"]
    assert body["usage"]["completion_tokens"] == 12
    events = parse_sse((await chat(gw, n=2, seed=3, stream=True)).text)[:-1]
    order = [c["choices"][0]["index"] for c in events]
    assert order[:4] == [0, 0, 1, 1]  # role chunk then first token, for each choice in turn
    assert order[4:6] == [0, 1]  # then tokens alternate choice by choice
    for i in (0, 1):
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in events if c["choices"][0]["index"] == i)
        assert text == body["choices"][i]["message"]["content"]


async def test_stop_string_ends_the_text_before_it(gw):
    full = (await chat(gw, seed=4, max_tokens=12, ignore_eos=True)).json()["choices"][0]["message"]["content"]
    third_word = full.split()[2]
    body = (await chat(gw, seed=4, max_tokens=12, ignore_eos=True, stop=[" " + third_word])).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == " ".join(full.split()[:2])
    streamed = parse_sse(
        (await chat(gw, seed=4, max_tokens=12, ignore_eos=True, stop=" " + third_word, stream=True)).text
    )
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-1]) == choice["message"]["content"]


async def test_max_tokens_1_gives_one_token_and_length(gw):
    body = (await chat(gw, max_tokens=1, seed=1)).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 1
    assert len(body["choices"][0]["message"]["content"].split()) == 1


async def test_max_completion_tokens_supersedes_max_tokens(gw):
    body = (await chat(gw, max_tokens=5, max_completion_tokens=2, ignore_eos=True, seed=1)).json()
    assert body["usage"]["completion_tokens"] == 2
    assert gw.worker.servicer.generate_requests[-1].params.max_tokens == 2


async def test_logprobs_with_top_logprobs_in_chat_format(gw):
    body = (await chat(gw, seed=2, logprobs=True, top_logprobs=2)).json()
    [choice] = body["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    assert "".join(item["token"] for item in content) == choice["message"]["content"]
    for item in content:
        assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
        assert item["bytes"] == list(item["token"].encode())
        assert len(item["top_logprobs"]) == 2
        assert item["top_logprobs"][0]["token"] == item["token"]
        assert set(item["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    events = parse_sse((await chat(gw, seed=2, logprobs=True, top_logprobs=2, stream=True)).text)
    streamed = [item for c in events[:-1] for item in ((c["choices"][0]["logprobs"] or {}).get("content") or [])]
    assert streamed == content


async def test_logprobs_true_without_top_logprobs_asks_for_zero_alternatives(gw):
    body = (await chat(gw, seed=2, logprobs=True)).json()
    assert all(item["top_logprobs"] == [] for item in body["choices"][0]["logprobs"]["content"])
    assert gw.worker.servicer.generate_requests[-1].params.logprobs == 0


async def test_every_sampling_field_and_engine_extra_reaches_the_worker(gw):
    r = await chat(
        gw,
        n=2,
        temperature=0.5,
        top_p=0.9,
        max_tokens=20,
        stop=["zzz", "yyy"],
        seed=42,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
        min_tokens=3,
        ignore_eos=True,
        priority=-2,
        stop_token_ids=[7, 8],
        include_stop_str_in_output=True,
        skip_special_tokens=False,
        user="clinician-17",
    )
    assert r.status_code == 200, r.text
    sent = gw.worker.servicer.generate_requests[-1]
    p = sent.params
    assert (p.n, p.max_tokens, list(p.stop), p.seed, p.top_k, p.min_tokens) == (2, 20, ["zzz", "yyy"], 42, 40, 3)
    assert p.temperature == pytest.approx(0.5) and p.top_p == pytest.approx(0.9)
    assert p.presence_penalty == pytest.approx(0.5) and p.frequency_penalty == pytest.approx(-0.5)
    assert p.min_p == pytest.approx(0.05) and p.repetition_penalty == pytest.approx(1.1)
    assert p.ignore_eos and p.include_stop_str_in_output and p.skip_special_tokens is False
    assert list(p.stop_token_ids) == [7, 8]
    assert not p.HasField("logprobs")
    assert sent.priority == -2
    assert sent.cache_salt == f"team:{TEAM}"  # the identity layer's per-team salt (Principal.cache_salt)
    assert sent.model == MODEL and sent.request_id == r.headers["x-request-id"]


async def test_unset_fields_stay_unset_for_the_engine_defaults(gw):
    await chat(gw)
    p = gw.worker.servicer.generate_requests[-1].params
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "logprobs", "skip_special_tokens"):
        assert not p.HasField(name), name


async def test_text_parts_are_joined_and_the_template_is_left_to_the_worker(gw):
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}], "name": "dr"}
    ]
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "seed": 1})
    assert r.status_code == 200
    chat_prompt = gw.worker.servicer.generate_requests[-1].prompt.chat
    assert [(m.role, m.content, m.name) for m in chat_prompt.messages] == [("user", "one two", "dr")]
    assert chat_prompt.add_generation_prompt and not chat_prompt.continue_final_message


async def test_image_parts_are_refused_with_400(gw):
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"
    assert gw.worker.servicer.generate_requests == []


async def test_modalities_other_than_text_are_refused_with_400(gw):
    # Ward answers in text only: audio asked for through modalities must not come back as plain text
    for modalities in (["audio"], ["text", "audio"], ["image"]):
        r = await chat(gw, modalities=modalities)
        assert r.status_code == 400, modalities
        error = r.json()["error"]
        assert error["param"] == "modalities" and error["type"] == "invalid_request_error", error
        assert error["code"] == "invalid_value" and "text" in error["message"]
    assert gw.worker.servicer.generate_requests == []
    assert (await chat(gw, modalities=["text"])).status_code == 200


async def test_a_message_without_content_is_refused_unless_it_is_the_assistants(gw):
    # OpenAI requires content for these roles; a misspelt key would otherwise leave an empty turn
    for message in ({"role": "user"}, {"role": "user", "contents": "hi"}, {"role": "system", "content": None},
                    {"role": "developer"}, {"role": "tool", "tool_call_id": "call_1"}):
        r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": [message]})
        assert r.status_code == 400, message
        assert r.json()["error"]["param"] == "messages" and "content" in r.json()["error"]["message"]
    assert gw.worker.servicer.generate_requests == []
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    r = await gw.client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert r.status_code == 200


TWO_CALLS = ('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n'
             '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')


def _finished_run(text: str) -> SimpleNamespace:
    ctx = SimpleNamespace(num_choices=1, finish_reasons=["stop"], response_text=lambda i: text)
    return SimpleNamespace(ctx=ctx, logprobs=None, usage=lambda: {})


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_false_returns_only_the_first_call_of_a_free_answer(stream):
    # tool_choice auto leaves the model free to write several calls; OpenAI (and vLLM) then return one
    tools = [{"type": "function", "function": {"name": name}} for name in ("f", "g")]
    request = ChatCompletionRequest.model_validate(
        {"model": MODEL, "messages": MESSAGES, "tools": tools, "parallel_tool_calls": False, "stream": stream})
    fmt = ChatFormatter(ResponseMeta("chatcmpl-1", MODEL, None), request, tool_plan(request, None))
    if stream:
        events = parse_sse((fmt.delta_events(0, pb.ChoiceDelta(text=TWO_CALLS)) + fmt.final_events(
            _finished_run(TWO_CALLS))).decode())
        heads = [c for e in events[:-1] for c in e["choices"][0]["delta"].get("tool_calls", ()) if "id" in c]
        assert [h["function"]["name"] for h in heads] == ["f"] and heads[0]["index"] == 0
        assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    else:
        [choice] = fmt.response(_finished_run(TWO_CALLS))["choices"]
        assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["f"]
        assert choice["finish_reason"] == "tool_calls"
