"""Asynchronous scheduling (step N+1 launched before step N is collected) gives exactly the
outputs of synchronous stepping. Forced on here so the CPU suite covers its bookkeeping:
placeholder tokens, inputs gathered from the previous step's samples, discarded extra tokens."""
from __future__ import annotations

import pytest

from tests.prompts import PROMPTS
from worker import LLM, SamplingParams


@pytest.fixture(scope="module")
def pair(default_model_dir):
    kw = dict(model=default_model_dir, device="cpu", max_model_len=1024)
    return LLM(async_scheduling=False, **kw), LLM(async_scheduling=True, **kw)


def run(llm, prompts, params):
    return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in llm.generate(prompts, params)]


def test_greedy_batch_is_identical(pair):
    sync, asyn = pair
    params = SamplingParams(temperature=0, max_tokens=24)
    assert run(asyn, PROMPTS[:8], params) == run(sync, PROMPTS[:8], params)
    assert asyn.engine.kv.pool.num_used_blocks == 0 and not asyn.engine.has_unfinished_requests()


def test_stops_seeds_and_logprobs_are_identical(pair):
    sync, asyn = pair
    base = sync.generate(PROMPTS[4], SamplingParams(temperature=0, max_tokens=30))[0].outputs[0].text
    params = [SamplingParams(temperature=0, max_tokens=30, stop=[base[10:16]]),
              SamplingParams(temperature=0.8, seed=11, max_tokens=20, logprobs=2),
              SamplingParams(temperature=0, max_tokens=1),
              SamplingParams(temperature=0.7, top_k=20, seed=3, max_tokens=25, min_tokens=25, ignore_eos=True)]
    prompts = [PROMPTS[4], PROMPTS[1], PROMPTS[2], PROMPTS[5]]
    a, b = sync.generate(prompts, params), asyn.generate(prompts, params)
    for x, y in zip(a, b):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert x.outputs[0].text == y.outputs[0].text
        assert x.outputs[0].finish_reason == y.outputs[0].finish_reason
    assert [lp.logprob for lp in b[1].outputs[0].logprobs] == pytest.approx([lp.logprob for lp in a[1].outputs[0].logprobs])


def test_preemption_under_async_scheduling_keeps_output(default_model_dir, pair):
    sync, _ = pair
    tight = LLM(model=default_model_dir, device="cpu", max_model_len=1024, num_kv_blocks=24, async_scheduling=True)
    params = SamplingParams(temperature=0, max_tokens=40)
    prompts = [{"prompt_token_ids": list(range(100 + 7 * i, 160 + 7 * i))} for i in range(6)]
    assert run(tight, prompts, params) == run(sync, prompts, params)
    assert tight.engine.stats().num_preemptions > 0
    assert tight.engine.kv.pool.num_used_blocks == 0


def test_abort_while_a_step_is_in_flight(pair):
    _, asyn = pair
    eng = asyn.engine
    eng.add_request("inflight", PROMPTS[0], SamplingParams(temperature=0, max_tokens=50))
    eng.add_request("keeps-going", PROMPTS[1], SamplingParams(temperature=0, max_tokens=5))
    eng.step()
    eng.step()
    eng.abort_request("inflight")
    done = []
    while eng.has_unfinished_requests():
        done += [o for o in eng.step() if o.finished]
    assert [o.request_id for o in done] == ["keeps-going"] and len(done[0].outputs[0].token_ids) == 5
    assert eng.kv.pool.num_used_blocks == 0
