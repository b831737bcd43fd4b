"""Engine features on the default model: sampling controls, seeds, stop conditions, logprobs,
n > 1, streaming deltas, statistics, and typed errors for bad input."""
from __future__ import annotations

import math

import pytest

from worker import LLM, SamplingParams
from worker.errors import InvalidRequestError, PromptTooLongError, RequestTooLargeError, TokenIdsOutOfRangeError


@pytest.fixture(scope="module")
def llm(default_model_dir):
    return LLM(model=default_model_dir, device="cpu", max_model_len=512)


PROMPT = "Once upon a time, in a small village by the sea,"


def test_seeded_sampling_is_the_same_alone_and_inside_a_mixed_batch(llm):
    p = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=24)
    alone = llm.generate(PROMPT, p)[0].outputs[0].token_ids
    batch = [
        "Hello", PROMPT, "List three colours:", "def f(x):",
    ]
    params = [SamplingParams(temperature=1.3, max_tokens=30), p, SamplingParams(temperature=0, max_tokens=5),
              SamplingParams(temperature=0.7, top_k=5, seed=9, max_tokens=40)]
    mixed = llm.generate(batch, params)[1].outputs[0].token_ids
    assert alone == mixed
    other_seed = llm.generate(PROMPT, SamplingParams(temperature=0.9, top_p=0.95, seed=99, max_tokens=24))
    assert other_seed[0].outputs[0].token_ids != alone


def test_unseeded_sampling_varies_and_greedy_does_not(llm):
    hot = SamplingParams(temperature=1.5, max_tokens=20)
    a, b = (llm.generate(PROMPT, hot)[0].outputs[0].token_ids for _ in range(2))
    assert a != b
    g = SamplingParams(temperature=0, max_tokens=20)
    assert llm.generate(PROMPT, g)[0].outputs[0].token_ids == llm.generate(PROMPT, g)[0].outputs[0].token_ids


def test_top_k_one_is_greedy(llm):
    greedy = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=16))[0].outputs[0].token_ids
    topk1 = llm.generate(PROMPT, SamplingParams(temperature=1.0, top_k=1, max_tokens=16))[0].outputs[0].token_ids
    assert greedy == topk1


def test_max_tokens_min_tokens_and_ignore_eos(llm):
    out = llm.chat([{"role": "user", "content": "Say hi."}], SamplingParams(temperature=0, max_tokens=200))[0]
    natural = len(out.outputs[0].token_ids)
    assert out.outputs[0].finish_reason == "stop" and natural < 200
    forced = llm.chat([{"role": "user", "content": "Say hi."}],
                      SamplingParams(temperature=0, max_tokens=natural + 10, min_tokens=natural + 5))[0]
    assert len(forced.outputs[0].token_ids) >= natural + 5
    # min_tokens counts the outputs before the one being sampled (as vLLM does): EOS, the natural-th
    # token, is still banned when min_tokens is exactly that count
    edge = llm.chat([{"role": "user", "content": "Say hi."}],
                    SamplingParams(temperature=0, max_tokens=natural + 10, min_tokens=natural))[0].outputs[0]
    assert len(edge.token_ids) > natural
    ign = llm.chat([{"role": "user", "content": "Say hi."}],
                   SamplingParams(temperature=0, max_tokens=natural + 7, ignore_eos=True))[0]
    assert len(ign.outputs[0].token_ids) == natural + 7 and ign.outputs[0].finish_reason == "length"
    one = llm.generate(PROMPT, SamplingParams(max_tokens=1))[0].outputs[0]
    assert len(one.token_ids) == 1 and one.finish_reason == "length"


def test_stop_token_ids_end_generation_and_report_the_token(llm):
    base = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=20))[0].outputs[0]
    stop_at = base.token_ids[5]
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_at]))[0].outputs[0]
    assert out.token_ids == base.token_ids[: base.token_ids.index(stop_at) + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at


def test_stop_strings_across_token_boundaries(llm):
    base = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40))[0].outputs[0]
    text = base.text
    # a stop string that starts inside one token and ends inside a later one
    target = text[7:16]
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40, stop=[target]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == target
    assert out.text == text[: text.index(target)]
    incl = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40, stop=[target],
                                               include_stop_str_in_output=True))[0].outputs[0]
    assert incl.text == text[: text.index(target) + len(target)]


def test_streamed_deltas_concatenate_to_the_final_text_and_never_leak_a_stop_string(llm):
    engine = llm.engine
    base = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40))[0].outputs[0].text
    stop = base[20:27]
    engine.add_request("stream-1", PROMPT, SamplingParams(temperature=0, max_tokens=40, stop=[stop]))
    deltas, final = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas.append(out.outputs[0].text_delta)
            assert stop not in "".join(deltas)
            final = out
    assert final.finished and "".join(deltas) == final.outputs[0].text == base[: base.index(stop)]


def test_logprobs_with_top_alternatives(llm):
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=6, logprobs=3))[0].outputs[0]
    assert len(out.logprobs) == 6
    for tok, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == tok and lp.logprob <= 0
        assert len(lp.top) == 3
        assert lp.top[0].token_id == tok  # greedy: the sampled token is the most likely one
        assert lp.top[0].logprob == pytest.approx(lp.logprob)
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
        assert isinstance(lp.token, str)
    assert out.cumulative_logprob == pytest.approx(sum(lp.logprob for lp in out.logprobs))


def test_n_choices_share_the_prompt_blocks(llm):
    prompt = PROMPT * 8  # several full blocks
    before = llm.engine.stats().prefix_cache_hits
    outs = llm.generate(prompt, SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=12))[0]
    assert [o.index for o in outs.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in outs.outputs}) > 1
    n_prompt = len(outs.prompt_token_ids)
    gained = llm.engine.stats().prefix_cache_hits - before
    assert gained >= 2 * ((n_prompt - 1) // 16) * 16  # choices 1 and 2 reused choice 0's full blocks


def test_penalties_change_the_distribution(llm):
    text = "the the the the the the the the"
    plain = llm.generate(text, SamplingParams(temperature=0, max_tokens=12))[0].outputs[0].token_ids
    rep = llm.generate(text, SamplingParams(temperature=0, max_tokens=12, repetition_penalty=1.8))[0].outputs[0].token_ids
    freq = llm.generate(text, SamplingParams(temperature=0, max_tokens=12, frequency_penalty=2.0,
                                             presence_penalty=1.0))[0].outputs[0].token_ids
    assert rep != plain and freq != plain
    assert len(set(freq)) >= len(set(plain))


def test_a_tiny_top_p_keeps_only_the_most_likely_token(llm):
    p = SamplingParams(temperature=1.0, top_p=0.01, max_tokens=12, seed=3)
    greedy = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=12))[0].outputs[0].token_ids
    assert llm.generate(PROMPT, p)[0].outputs[0].token_ids == greedy


def test_multibyte_text_streams_whole_characters(llm):
    engine = llm.engine
    engine.add_request("mb", "東京は日本の首都です。大阪は", SamplingParams(temperature=0, max_tokens=30))
    deltas, final = [], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            deltas.append(out.outputs[0].text_delta)
            final = out
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == final.outputs[0].text
    tok = llm.engine.tokenizer
    # a trailing partial character (cut off by max_tokens) is never emitted as U+FFFD
    assert final.outputs[0].text == tok.decode(final.outputs[0].token_ids).rstrip("\ufffd")


def test_engine_statistics(llm):
    llm.generate([PROMPT, PROMPT], SamplingParams(temperature=0, max_tokens=4))
    s = llm.engine.stats()
    assert s.num_running == 0 and s.num_waiting == 0 and s.kv_blocks_used == 0
    assert s.kv_blocks_total > 0 and s.prefix_cache_queries > 0 and s.prefix_cache_hits > 0
    assert 0.0 <= s.kv_waste_time_weighted < 1.0
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=8))[0]
    m = out.metrics
    assert m.time_to_first_token is not None and m.time_to_first_token > 0
    assert len(m.inter_token_latencies) == 7 and all(x >= 0 for x in m.inter_token_latencies)


def test_abort_frees_blocks_at_once(llm):
    engine = llm.engine
    engine.add_request("to-abort", PROMPT * 4, SamplingParams(max_tokens=100))
    engine.step()
    assert engine.stats().kv_blocks_used > 0
    outs = engine.abort_request("to-abort")
    assert outs[0].finished and outs[0].outputs[0].finish_reason == "abort"
    assert engine.stats().kv_blocks_used == 0 and not engine.has_unfinished_requests()


@pytest.mark.parametrize(
    "kwargs",
    [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2), dict(min_p=2), dict(max_tokens=0),
     dict(n=0), dict(min_tokens=5, max_tokens=2), dict(logprobs=50), dict(presence_penalty=3),
     dict(repetition_penalty=0), dict(stop=[""]), dict(stop_token_ids=[-1])],
)
def test_out_of_range_params_raise_a_typed_error(kwargs):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**kwargs)


def test_bad_prompts_raise_typed_errors_and_harm_no_other_request(llm):
    engine = llm.engine
    engine.add_request("healthy", PROMPT, SamplingParams(temperature=0, max_tokens=8))
    with pytest.raises(PromptTooLongError, match="maximum context length is 512"):
        engine.add_request("too-long", {"prompt_token_ids": [5] * 600}, SamplingParams(max_tokens=4))
    with pytest.raises(PromptTooLongError):
        engine.add_request("too-long-2", {"prompt_token_ids": [5] * 500}, SamplingParams(max_tokens=100))
    with pytest.raises(InvalidRequestError):
        engine.add_request("empty", "", SamplingParams())
    with pytest.raises(TokenIdsOutOfRangeError, match="token ids out of range"):  # the gateway names the prompt
        engine.add_request("bad-ids", {"prompt_token_ids": [10**9]}, SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine.add_request("bad-shape", {"nonsense": 1}, SamplingParams())
    with pytest.raises(InvalidRequestError):
        engine.add_request("healthy", PROMPT, SamplingParams())  # duplicate id
    done = []
    while engine.has_unfinished_requests():
        done += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in done] == ["healthy"] and len(done[0].outputs[0].token_ids) == 8


def test_a_request_that_can_never_fit_the_pool_is_refused(default_model_dir):
    tiny = LLM(model=default_model_dir, device="cpu", num_kv_blocks=4)  # 64 tokens in all
    with pytest.raises(RequestTooLargeError):
        tiny.generate({"prompt_token_ids": [7] * 80}, SamplingParams(max_tokens=4))
    with pytest.raises(RequestTooLargeError):
        tiny.generate({"prompt_token_ids": [7] * 40}, SamplingParams(max_tokens=40))
    out = tiny.generate({"prompt_token_ids": [7] * 40}, SamplingParams(max_tokens=None, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 24 and out.outputs[0].finish_reason == "length"
    assert not math.isnan(tiny.engine.stats().kv_usage)


def test_logprobs_carry_the_bytes_of_tokens_that_hold_part_of_a_character(llm):
    # byte-level BPE splits "你好" into tokens that alone decode to U+FFFD; their bytes joined are the text
    text = "你好 🙂 é"
    out = llm.generate(text, SamplingParams(max_tokens=1, prompt_logprobs=0, logprobs=0))[0]
    prompt = out.prompt_logprobs
    assert any(lp.token == "\ufffd" for lp in prompt)
    assert b"".join(lp.token_bytes for lp in prompt).decode() == text
    assert all(lp.token_bytes == lp.token.encode() for lp in prompt if "\ufffd" not in lp.token)
