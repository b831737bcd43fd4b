"""Greedy output of the default model equals Hugging Face transformers' greedy generate,
token for token, in float32: all together, under preemption, and the shortest and longest prompts
one at a time."""
from __future__ import annotations

import pytest
import torch

from tests.prompts import CHAT, PROMPTS
from worker import LLM, SamplingParams

NEW_TOKENS = 64


@pytest.fixture(scope="module")
def reference(default_model_dir):
    """transformers' greedy continuation of each prompt (one generate call per prompt)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    hf = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    texts = list(PROMPTS) + [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in CHAT]
    cases = []
    for i, text in enumerate(texts):
        ids = tok(text, add_special_tokens=i < len(PROMPTS)).input_ids
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.eos_token_id)
        cases.append((ids, out[0, len(ids):].tolist()))
    return cases


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS)


def check(outputs, reference):
    assert len(outputs) == len(reference) >= 20
    lengths = {len(ids) for ids, _ in reference}
    assert min(lengths) < 10 and max(lengths) > 250  # varied lengths, as promised
    for out, (ids, expected) in zip(outputs, reference):
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == expected, f"diverged on prompt of {len(ids)} tokens"


@pytest.fixture(scope="module")
def llm(default_model_dir):
    return LLM(model=default_model_dir, dtype="float32", device="cpu")


def as_prompts(reference):
    return [{"prompt_token_ids": ids} for ids, _ in reference]


def test_one_request_at_a_time(llm, reference):
    # the four shortest and four longest prompts alone (every prompt runs in the batched tests below):
    # a request with the engine to itself, at both ends of the length range
    by_length = sorted(range(len(reference)), key=lambda i: len(reference[i][0]))
    alone = [reference[i] for i in by_length[:4] + by_length[-4:]]
    assert len(alone[0][0]) < 10 and len(alone[-1][0]) > 250
    for ids, expected in alone:
        out = llm.generate({"prompt_token_ids": ids}, greedy())[0]
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == expected, f"diverged on prompt of {len(ids)} tokens"


def test_all_requests_submitted_together(llm, reference):
    check(llm.generate(as_prompts(reference), greedy()), reference)


def test_text_prompts_and_chat_go_through_the_same_tokenization(llm, reference):
    outs = llm.generate(PROMPTS[:3], greedy())
    for out, (ids, expected) in zip(outs, reference[:3]):
        assert out.prompt_token_ids == ids and out.outputs[0].token_ids == expected
    chat = llm.chat(CHAT[0], greedy())[0]
    assert chat.outputs[0].token_ids == reference[len(PROMPTS)][1]


def test_under_preemption_output_is_identical(default_model_dir, reference):
    # 40 blocks of 16 tokens: far less than the 22 requests need together, enough for the longest alone.
    small = LLM(model=default_model_dir, dtype="float32", device="cpu", num_kv_blocks=40)
    outs = small.generate(as_prompts(reference), greedy())
    assert small.engine.stats().num_preemptions > 0
    check(outs, reference)
    assert small.engine.kv.pool.num_used_blocks == 0
