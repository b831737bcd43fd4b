"""Tensor parallelism on NVIDIA GPUs (NCCL, CUDA graphs captured on every rank with the all-reduce
inside, the KV pool sized by the smallest rank's measured budget). Skipped without two GPUs; the
CPU suite (tests/test_tensor_parallel.py) covers the same path over gloo."""
from __future__ import annotations

import pytest
import torch

from tests.test_tensor_parallel import CHECKPOINTS, PROMPTS, checkpoints  # noqa: F401 (fixture)
from worker.llm import LLM
from worker.sampling_params import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two NVIDIA GPUs (the CPU suite tests TP over gloo)"),
]

GREEDY = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)


def run(model_dir: str, tp: int, **extra) -> tuple[list[list[int]], LLM]:
    llm = LLM(model_dir, tensor_parallel_size=tp, device="cuda", dtype="float32", max_model_len=256,
              gpu_memory_utilization=0.5, **extra)
    return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, GREEDY)], llm


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_tp2_with_cuda_graphs_gives_tp1_greedy_tokens(checkpoints, name):  # noqa: F811
    single, llm = run(checkpoints[name], 1)
    llm.engine.close()
    split, llm = run(checkpoints[name], 2)
    try:
        assert llm.engine.runner.graphs is not None  # decode steps replayed graphs on both ranks
        assert split == single
    finally:
        llm.engine.close()


def test_tp2_kv_pool_is_sized_by_the_smallest_rank_and_holds_half_the_heads(checkpoints):  # noqa: F811
    _, one = run(checkpoints["llama"], 1, enforce_eager=True)
    one_block = one.engine.runner.kv_block_bytes()
    one.engine.close()
    _, two = run(checkpoints["llama"], 2, enforce_eager=True)
    try:
        assert two.engine.runner.kv_block_bytes() * 2 == one_block
        assert two.engine.runner.memory_report["kv_budget"] > 0
    finally:
        two.engine.close()
