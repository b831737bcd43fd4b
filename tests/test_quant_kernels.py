"""Quantized GEMM kernels (INT4 de-quantizing GEMM and GEMV, block-scaled FP8 GEMM, the FP8
``torch._scaled_mm`` layer path and its activation quantization, the fused MoE over FP8 experts)
against torch references: in Triton's interpreter on the CPU (one subprocess with ``TRITON_INTERPRET=1``, small shapes, float32), compiled on CUDA (``gpu``-marked,
bfloat16 at Llama-3.1-8B shapes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from quant_kernels_cases import (  # noqa: E402
    INTERPRETER_CASES,
    check_fp8_block,
    check_fp8_channel,
    check_fp8_fused_input,
    check_fp8_moe,
    check_fp8_quant,
    check_int4,
)

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.fixture(scope="module")
def interpreter_errors() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(TESTS_DIR.parent)}
    done = subprocess.run([sys.executable, str(TESTS_DIR / "quant_kernels_cases.py")], env=env, capture_output=True,
                          text=True, timeout=300, cwd=str(TESTS_DIR.parent))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(INTERPRETER_CASES))
def test_quant_kernel_matches_reference_in_interpreter(interpreter_errors, case):
    assert interpreter_errors[case] < 1e-5


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("M", [1, 4, 8, 16, 77, 512])
def test_int4_matmul_matches_dequantized_reference(M, group):
    # Llama-3.1-8B's gate_up projection shape (K = 4096, N = 2 x 14336 is cut to 8192 for time)
    assert check_int4(M, 4096, 8192, group, None, "cuda", torch.bfloat16) < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("M", [1, 5, 300])
def test_int4_matmul_with_float_offsets_matches_reference(M):
    assert check_int4(M, 4096, 4096, 32, None, "cuda", torch.bfloat16, offsets=True) < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("M", [1, 8, 300])
def test_int8_matmul_matches_dequantized_reference(M):
    """8-bit GPTQ and GGUF Q8_0 codes (four to a word) through the same GEMM / GEMV."""
    assert check_int4(M, 4096, 4096, 32, None, "cuda", torch.bfloat16, bits=8) < 2e-2
    assert check_int4(M, 4096, 4096, 32, None, "cuda", torch.bfloat16, offsets=True, bits=8) < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("M", [1, 3])
def test_int4_gemm_and_gemv_agree_on_small_batches(M):
    assert check_int4(M, 4096, 4096, 128, "gemm", "cuda", torch.bfloat16) < 2e-2
    assert check_int4(M, 4096, 4096, 128, "gemv", "cuda", torch.bfloat16) < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("M", [1, 16, 200, 1024])
def test_fp8_block_gemm_matches_dequantized_reference(M):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need Ada or Hopper")
    assert check_fp8_block(M, 4096, 6144, "cuda", torch.bfloat16) < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("M", [16, 200, 256, 2048])
@pytest.mark.parametrize("plan", [(64, 128, 128, 4, 4), (128, 256, 128, 8, 3)])
def test_fp8_channel_gemm_matches_dequantized_reference(M, plan):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need Ada or Hopper")
    assert check_fp8_channel(M, 4096, 6144, "cuda", plan, torch.bfloat16) < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("T, per_block", [(1, True), (64, True), (700, True), (64, False)])
def test_fp8_moe_matches_dequantized_reference(T, per_block):
    """Qwen3-30B-A3B's expert shape (128 experts, top 8, hidden 2048, 768 per expert), bfloat16."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("Triton reads e4m3 from Ada on")
    assert check_fp8_moe(T, 128, 8, 2048, 768, per_block, "cuda", torch.bfloat16) < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("M", [1, 33, 512])
def test_fp8_scaled_mm_layer_matches_its_reference(M):
    """Fp8Linear on CUDA (per-token dynamic activation scales, per-channel weight scales, through
    torch._scaled_mm) against the same quantization done in float32 torch."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need Ada or Hopper")
    from torch import nn

    from worker.model.quant.config import QuantConfig
    from worker.model.quant.linear import Fp8Linear, quantize_fp8_per_token

    torch.manual_seed(M)
    linear = nn.Linear(4096, 6144, bias=True, device="cuda", dtype=torch.bfloat16)
    layer = Fp8Linear.from_float(linear, QuantConfig("fp8", "fp8"))
    x = torch.randn(M, 4096, device="cuda", dtype=torch.bfloat16)
    xq, xs = quantize_fp8_per_token(x)
    want = (xq.float() * xs) @ (layer.weight.float() * layer.weight_scale).t() + layer.bias.float()
    got = layer(x).float()
    assert float((got - want).abs().max() / want.abs().max()) < 2e-2


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("T", [1, 7, 300, 2048])
@pytest.mark.parametrize("K, group", [(4096, None), (14336, None), (4096, 128), (7168, 128), (300, 128)])
def test_fp8_activation_quantization_is_bit_exact_with_torch(T, K, group):
    """The one-kernel quantization rounds as the torch reference does (random bf16 activations, so
    values do round), per token and per 128-column block; a static scale per token."""
    assert check_fp8_quant(T, K, group, "cuda", torch.bfloat16) == 0.0
    if group is None:
        assert check_fp8_quant(T, K, None, "cuda", torch.bfloat16, static=True) == 0.0


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("T", [1, 9, 300, 2048])
@pytest.mark.parametrize("kind, width", [("norm", 4096), ("norm-residual", 4096), ("norm-residual", 5120),
                                         ("silu", 14336), ("silu", 1000), ("silu-one-pass", 14336),
                                         ("silu-one-pass", 1000)])
def test_fp8_input_quantized_in_the_norm_or_silu_matches_the_two_launches(T, kind, width):
    """Compiled, in bfloat16: the one-launch norm/SiLU + quantization gives the codes of the two launches
    but for rare values one e4m3 step away (the norm's sum of squares reduced in another order: on an
    H100, 2,048 rows of 4,096 showed such values, fewer rows none; a row whose scale moves a step moves
    many), the same residual sums, and scales within a bf16 step; in the interpreter the two are the
    same bits. The SiLU path has no sum before its amax and stays bit-exact, its row read twice or
    once."""
    differing = check_fp8_fused_input(kind, T, width, "cuda", torch.bfloat16)
    assert differing == 0.0 if kind.startswith("silu") else differing < 1e-2


def test_silu_fp8_one_pass_setting_is_0_or_1(monkeypatch):
    """``WARD_SILU_FP8_ONE_PASS``: 0 reads a row twice, unset or 1 once; anything else is refused by name."""
    from worker.kernels.activation import silu_fp8_one_pass

    monkeypatch.delenv("WARD_SILU_FP8_ONE_PASS", raising=False)
    assert silu_fp8_one_pass() is True
    monkeypatch.setenv("WARD_SILU_FP8_ONE_PASS", "0")
    assert silu_fp8_one_pass() is False
    monkeypatch.setenv("WARD_SILU_FP8_ONE_PASS", "1")
    assert silu_fp8_one_pass() is True
    for bad in ("2", "on"):
        monkeypatch.setenv("WARD_SILU_FP8_ONE_PASS", bad)
        with pytest.raises(ValueError, match="WARD_SILU_FP8_ONE_PASS"):
            silu_fp8_one_pass()
