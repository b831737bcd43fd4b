"""Decode CUDA graphs per context bound: which bounds a batch size gets graphs for (CPU), what the
Triton attention launches under a bound, and on a GPU the same greedy tokens with graphs per bound as
with one graph a size at the model's length."""
from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
import torch

from worker.attention.triton_backend import TritonAttention
from worker.kernels.attention import decode_split_plan, split_plan
from worker.kernels.attention_config import choose_num_splits
from worker.runner.cuda_graphs import SHORT_CONTEXT_BOUND, context_bounds


def test_without_a_launch_key_a_size_has_one_graph_at_the_model_length() -> None:
    assert context_bounds(4096, None) == [4096]


def test_short_contexts_get_a_graph_of_their_own_only_where_they_launch_differently() -> None:
    keys = {256: "unsplit", 4096: "four splits"}
    assert context_bounds(4096, keys.__getitem__) == [SHORT_CONTEXT_BOUND, 4096]
    assert context_bounds(4096, lambda bound: "the same") == [4096]
    assert SHORT_CONTEXT_BOUND == 256


def test_the_model_length_is_the_last_bound_and_only_bounds_below_it_are_tried() -> None:
    tried: list[int] = []
    assert context_bounds(3000, lambda b: tried.append(b) or b) == [256, 3000]
    assert tried == [256, 3000]
    assert context_bounds(256, lambda b: b) == [256]  # no shorter bound to add
    assert context_bounds(100, lambda b: b) == [100]


def test_split_plan_is_the_heuristic_without_overrides() -> None:
    for programs in (1, 8, 64, 200):
        for length in (100, 700, 4096):
            assert split_plan(programs, 1, length, 64, True, 132) == (choose_num_splits(programs, length, 132), 0)
    assert split_plan(8, 8, 4096, 64, True, 132, num_splits=1) == (1, 0)
    assert split_plan(8, 8, 1000, 64, True, 132, split_tokens=256) == (4, 4)  # 4 pieces of 4 tiles


def test_a_lone_request_on_one_kv_head_splits_more_as_its_bound_grows() -> None:
    # off CUDA the SM count is a stand-in of 4: one program wants 8 splits, each of >= 256 tokens
    attn = TritonAttention(4, 1, 64, 0.125, None)
    cpu = torch.device("cpu")
    plans = {b: attn.decode_launch_key(1, b, 2, cpu) for b in (256, 512, 1024, 2048, 4096)}
    assert plans == {256: (1, 0), 512: (2, 0), 1024: (4, 0), 2048: (8, 0), 4096: (8, 0)}
    assert context_bounds(4096, lambda b: attn.decode_launch_key(1, b, 2, cpu)) == [256, 4096]
    assert decode_split_plan(1, 4, 1, 64, 2, 4096, cpu, num_splits=2) == (2, 0)  # a forced count holds
    # a grid that fills the card is never split: one graph a size
    assert context_bounds(4096, lambda b: TritonAttention(8, 8, 64, 0.125, None).decode_launch_key(1, b, 2, cpu)) \
        == [4096]


def _runner_stand_in(attn_impls: list) -> SimpleNamespace:
    """What ModelRunner._graph_entries reads: the model's layers (with their ``attn``), the KV dtype,
    the model's length, the device and the largest graph batch."""
    layers = torch.nn.ModuleList(torch.nn.Module() for _ in attn_impls)
    for layer, impl in zip(layers, attn_impls):
        layer.attn = impl
    return SimpleNamespace(model=layers, kv_dtype=torch.bfloat16, max_model_len=4096, device=torch.device("cpu"),
                           graph_max_batch=lambda: 8)


def test_the_runner_captures_each_size_at_the_bounds_its_attention_launches_differently(monkeypatch) -> None:
    from worker.runner.model_runner import ModelRunner

    # one KV head on the stand-in's 4 SMs: batch 1 and 2 split long contexts, batch 4 and 8 never
    runner = _runner_stand_in([TritonAttention(4, 1, 64, 0.125, None) for _ in range(3)])
    assert ModelRunner._graph_entries(runner) == [(1, 256), (1, 4096), (2, 256), (2, 4096), (4, 4096), (8, 4096)]
    monkeypatch.setenv("WARD_DECODE_CONTEXT_GRAPHS", "0")
    assert ModelRunner._graph_entries(runner) == [(1, 4096), (2, 4096), (4, 4096), (8, 4096)]


def test_a_backend_that_does_not_say_what_it_launches_gets_one_graph_a_size() -> None:
    from worker.attention.torch_backend import TorchBackend
    from worker.runner.model_runner import ModelRunner

    torch_impl = TorchBackend().make_impl(4, 1, 64, 0.125, None)
    runner = _runner_stand_in([TritonAttention(4, 1, 64, 0.125, None), torch_impl])
    assert ModelRunner._graph_entries(runner) == [(1, 4096), (2, 4096), (4, 4096), (8, 4096)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA graphs)")
def test_graphs_per_context_bound_give_the_same_greedy_tokens_on_gpu(tmp_path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from worker.llm import LLM
    from worker.sampling_params import SamplingParams

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=211, max_position_embeddings=2048, rms_norm_eps=1e-6)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    # contexts cross 256 tokens while they decode, so steps move from the short graph to the long one
    prompts = [{"prompt_token_ids": [(7 * i + 3) % 200 + 5 for i in range(n)]} for n in (100, 20, 180)]
    params = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)
    runs = {}
    for on in ("1", "0"):
        monkeypatch.setenv("WARD_DECODE_CONTEXT_GRAPHS", on)
        # a fixed KV pool: the budget is not profiled against what the run before still holds
        llm = LLM(str(tmp_path), device="cuda", dtype="float32", max_model_len=2048, num_kv_blocks=512)
        try:
            runs[on] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]
            bounds = dict(llm.engine.runner.graphs.bounds)
        finally:
            llm.engine.close()
            del llm
            gc.collect()
            torch.cuda.empty_cache()
        assert bounds[1] == ([256, 2048] if on == "1" else [2048])
        assert bounds[4] == bounds[1]  # the three prompts decode in the graph of four
    assert runs["1"] == runs["0"]
