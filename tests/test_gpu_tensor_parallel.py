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


# ---- quantized checkpoints over two GPUs -------------------------------------------------------
QUANT_CASES = ["fp8-block", "ct-fp8-channel", "ct-fp8-tensor", "awq-g128", "gptq-g128", "fp8-at-load", "kv-fp8",
               "qwen3-moe-fp8-block"]


def _quant_dir(case: str, tmp_path, base) -> tuple[str, dict]:
    from tests.test_quantization import FORMATS, _write
    from tests.test_tensor_parallel_quant import _qwen3_moe_fp8, write_quantized

    if case == "fp8-at-load":
        return _write(tmp_path / "float", base[0], base[1], None), {"quantization": "fp8"}
    if case == "kv-fp8":
        return _write(tmp_path / "float", base[0], base[1], None), {"kv_cache_dtype": "fp8"}
    if case == "qwen3-moe-fp8-block":
        return _qwen3_moe_fp8(tmp_path)[0], {}
    return write_quantized(tmp_path / case, base, *FORMATS[case]), {}


def _first_steps(model_dir: str, tp: int, **extra) -> tuple[list[int], torch.Tensor]:
    """Each prompt's first greedy token and that step's top-3 logprobs, in bfloat16 on the kernels."""
    llm = LLM(model_dir, tensor_parallel_size=tp, device="cuda", dtype="bfloat16", max_model_len=256,
              gpu_memory_utilization=0.5, **extra)
    try:
        outs = [o.outputs[0] for o in llm.generate(PROMPTS, SamplingParams(max_tokens=1, temperature=0,
                                                                         ignore_eos=True, logprobs=3))]
    finally:
        llm.engine.close()
    return [o.token_ids[0] for o in outs], torch.tensor([[t.logprob for t in o.logprobs[0].top] for o in outs])


@pytest.mark.parametrize("case", QUANT_CASES)
def test_tp2_quantized_on_two_gpus_agrees_with_one(tmp_path, case):
    """The sharded tensors in the kernels' layouts (INT4 GEMM/GEMV, FP8 block GEMM, torch._scaled_mm,
    the fused FP8 MoE kernel, the FP8 KV cache): TP=2's first tokens and logprobs are TP=1's within
    bfloat16 rounding. Per-channel/per-tensor FP8 quantizes a row-parallel rank's activations per token
    over its own columns, so those logprobs differ a little more than the weight-only formats'."""
    if (case.startswith(("fp8", "ct-fp8", "qwen3")) or case == "kv-fp8") and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs Ada or Hopper")
    from tests.test_tensor_parallel_quant import make_tp_base

    model_dir, extra = _quant_dir(case, tmp_path, make_tp_base())
    tokens, top = _first_steps(model_dir, 1, **extra)
    split_tokens, split_top = _first_steps(model_dir, 2, **extra)
    assert split_tokens == tokens
    torch.testing.assert_close(split_top, top, rtol=0, atol=0.05)
