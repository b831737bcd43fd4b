"""Tensor parallelism on the CPU (gloo): the whole path (rank processes, sharded loading, the
collectives in the model, plan broadcast, sampling on rank 0) without GPUs.

- TP=2 (and TP=4 where the heads allow: 2 KV heads replicated over 4 ranks, a vocabulary padded to
  a multiple of 4) gives TP=1's greedy tokens on tiny random Llama, Qwen2 (qkv bias, tied embeddings)
  and Qwen3-MoE (experts split, a dense layer among sparse ones) checkpoints, chunked prefill included;
- shapes that cannot be split are refused before any process starts (quantized checkpoints:
  tests/test_tensor_parallel_quant.py);
- a killed rank ends ``ward worker`` with a non-zero exit within seconds, naming the rank.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest
import torch
from e2e_support import ProcessStack, clean_env
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3MoeConfig

from worker.errors import ModelLoadError
from worker.llm import LLM
from worker.sampling_params import SamplingParams

VOCAB = 509  # prime: every rank count pads the vocabulary
COMMON = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
              max_position_embeddings=1024, rms_norm_eps=1e-6, initializer_range=0.1)
CHECKPOINTS = {
    "llama": lambda: LlamaConfig(**COMMON, num_hidden_layers=2, tie_word_embeddings=False),
    "qwen2": lambda: Qwen2Config(**COMMON, num_hidden_layers=2, tie_word_embeddings=True),  # head = embedding shard
    "qwen3-moe": lambda: Qwen3MoeConfig(**COMMON, num_hidden_layers=3, head_dim=16, num_experts=4,
                                        num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                                        mlp_only_layers=[1], tie_word_embeddings=False),
}
PROMPTS = [{"prompt_token_ids": [1, 5, 9, 200, 7]}, {"prompt_token_ids": list(range(3, 80))},
           {"prompt_token_ids": [400, 2, 2, 2, 31, 77, 8]}]
GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True, logprobs=3)
# small token budget: the 77-token prompt is prefilled in chunks beside the others' decodes
ENGINE = dict(device="cpu", num_kv_blocks=64, max_num_batched_tokens=32, max_model_len=256)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks inherit it; 2 cores are shared by every process
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tp-checkpoints")
    dirs = {}
    for name, config in CHECKPOINTS.items():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config()).save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


def greedy(model_dir: str, tp: int) -> tuple[list[list[int]], torch.Tensor]:
    """Each prompt's greedy tokens, and the logprobs of every step's top 3 (float32)."""
    llm = LLM(model_dir, tensor_parallel_size=tp, **ENGINE)
    try:
        outs = [o.outputs[0] for o in llm.generate(PROMPTS, GREEDY)]
    finally:
        llm.engine.close()
    top = torch.tensor([[t.logprob for t in step.top] for out in outs for step in out.logprobs])
    return [list(out.token_ids) for out in outs], top


@pytest.mark.parametrize("name,tp", [("llama", 2), ("qwen2", 2), ("qwen3-moe", 2),
                                     pytest.param("qwen2", 4, marks=pytest.mark.slow)])  # 3 rank processes
def test_tensor_parallel_greedy_tokens_equal_a_single_rank(checkpoints, name, tp):
    tokens, top = greedy(checkpoints[name], 1)
    assert all(len(t) == GREEDY.max_tokens for t in tokens)
    split_tokens, split_top = greedy(checkpoints[name], tp)
    assert split_tokens == tokens
    torch.testing.assert_close(split_top, top, rtol=0, atol=1e-4)  # the numbers, not only the argmax


def test_shapes_that_cannot_be_split_are_refused_before_starting_ranks(checkpoints):
    with pytest.raises(ModelLoadError, match="must divide the 4 attention heads"):
        LLM(checkpoints["llama"], tensor_parallel_size=3, **ENGINE)


def test_asynchronous_scheduling_across_ranks_gives_the_synchronous_single_rank_tokens(checkpoints):
    """Step N + 1 is launched on every rank before step N is collected: the ranks gather step N's
    tokens from rank 0's broadcast on the device. Greedy, seeded sampling and a penalty (sampled after
    the step before is collected) agree with one synchronous rank."""
    params = [GREEDY, SamplingParams(temperature=0.8, seed=11, max_tokens=GREEDY.max_tokens, ignore_eos=True),
              SamplingParams(temperature=0.7, seed=5, frequency_penalty=0.8, max_tokens=GREEDY.max_tokens,
                             ignore_eos=True)]
    prompts = PROMPTS[:3]
    results = []
    for tp, asynchronous in ((1, False), (2, True)):
        llm = LLM(checkpoints["llama"], tensor_parallel_size=tp, async_scheduling=asynchronous, **ENGINE)
        try:
            assert llm.engine._async is asynchronous
            results.append([list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)])
        finally:
            llm.engine.close()
    assert results[1] == results[0]


def test_a_killed_rank_ends_the_worker_with_a_non_zero_exit_naming_the_rank(checkpoints, tmp_path):
    stack = ProcessStack(tmp_path)
    try:
        worker = stack.start_worker("tp", "--tensor-parallel-size", "2", model=checkpoints["llama"],
                                    env=clean_env())
        stack.wait_ready(worker)
        log = worker.child.log_path
        pid = int(re.search(r"tensor-parallel rank 1: pid (\d+)", log.read_text()).group(1))
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        assert worker.process.wait(30) != 0
        assert time.monotonic() - killed < 20  # noticed within 0.5 s; the rest is the process ending (busy CI)
        assert re.search(rf"tensor-parallel rank 1 \(pid {pid}\) failed: exit code -9", log.read_text())
    finally:
        stack.close()


def test_kv_heads_fewer_than_ranks_are_replicated_on_the_ranks_whose_queries_read_them(checkpoints):
    from worker.model.spec import load_spec
    from worker.parallel.layers import plan_shard

    spec = load_spec(checkpoints["qwen2"])  # 4 query heads, 2 KV heads
    shards = [plan_shard(spec, r, 4) for r in range(4)]
    assert [(s.heads, s.kv_heads, s.kv_start) for s in shards] == [(1, 1, 0), (1, 1, 0), (1, 1, 1), (1, 1, 1)]
    assert [s.vocab for s in shards] == [128] * 4 and 4 * 128 >= VOCAB  # padded to a multiple of 4
    two = [plan_shard(spec, r, 2) for r in range(2)]
    assert [(s.heads, s.kv_heads, s.kv_start, s.intermediate) for s in two] == [(2, 1, 0, 64), (2, 1, 1, 64)]
