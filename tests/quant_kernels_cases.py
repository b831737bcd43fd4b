"""Checks of the quantized-GEMM kernels against torch references, shared by the GPU tests and the
Triton-interpreter run on the CPU. Each returns the relative error (max |got - want| / max |want|)."""
from __future__ import annotations

import math

import torch

from worker.model.quant.linear import dequantize_fp8_block, quantize_fp8_per_token_block
from worker.model.quant.packing import dequantize_int, pack_rows


def check_int4(M: int, K: int, N: int, group: int, force: str | None, device: str, dtype=torch.float32,
               offsets: bool = False, bits: int = 4) -> float:
    """``offsets``: float offsets instead of integer zeros (GGUF Q4_1/Q4_K kept quantized); ``bits``
    8: the INT8 codes of 8-bit GPTQ and GGUF Q8_0."""
    from worker.kernels.int4_gemm import int_matmul

    gen = torch.Generator().manual_seed(M * 7 + K + N + group + bits)
    top = 1 << bits
    q = torch.randint(0, top, (K, N), generator=gen)
    zeros = torch.randint(0, top, (K // group, N), generator=gen).to(torch.uint8)
    scales = (torch.rand(K // group, N, generator=gen) * 0.02).to(dtype)
    offs = (torch.randn(K // group, N, generator=gen) * 0.05).half() if offsets else None
    x = torch.randn(M, K, generator=gen).to(dtype)
    qweight = pack_rows(q, bits)
    want = x.float() @ dequantize_int(qweight, scales, None if offsets else zeros, bits, group, torch.float32, offs)
    dev = torch.device(device)
    got = int_matmul(x.to(dev), qweight.to(dev), scales.to(dev), None if offsets else zeros.to(dev), group,
                     bits=bits, offsets=offs.to(dev) if offsets else None, force=force).float().cpu()
    return float((got - want).abs().max() / want.abs().max())


def check_fp8_quant(T: int, K: int, group: int | None, device: str, dtype=torch.float32, static: bool = False,
                    representable: bool = False) -> float:
    """The one-kernel activation quantization (``worker.kernels.fp8_quant``) against the torch
    reference (``quantize_fp8_per_token`` / ``_block``): scales and e4m3 codes must be the same bits
    (returns 1.0 if either differs, else 0.0). ``representable``: every value divided by its group's
    scale is an e4m3 value (each group's largest magnitude is 448 times a power of two), so no value
    is rounded: Triton's interpreter drops the carry of a float32 -> e4m3 rounding that reaches the
    next power of two (124.3 becomes 64), which compiled kernels do not."""
    from worker.kernels.fp8_quant import quantize_fp8_groups
    from worker.model.quant.linear import quantize_fp8_per_token

    gen = torch.Generator().manual_seed(T * 31 + K + (group or 0))
    width = group or K
    if representable:
        x = torch.randint(-448, 449, (T, K), generator=gen).float().to(torch.float8_e4m3fn).float()
        for g0 in range(0, K, width):
            x[:, g0] = 448.0  # the group's amax, so its scale is the power of two below
            x[:, g0:g0 + width] *= 2.0 ** torch.randint(-8, 4, (T, 1), generator=gen)
    else:
        x = torch.randn(T, K, generator=gen) * torch.rand(T, 1, generator=gen) * 8
    x = x.to(dtype)
    static_scale = torch.tensor([0.0625]) if static else None
    if group is None:
        want_q, want_s = quantize_fp8_per_token(x, static_scale)
    else:
        want_q, want_s = quantize_fp8_per_token_block(x, group)
    dev = torch.device(device)
    q, s = quantize_fp8_groups(x.to(dev), group, static_scale.to(dev) if static else None)
    same = torch.equal(q.cpu().view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(s.cpu(), want_s.float())
    return 0.0 if same else 1.0


def check_fp8_fused_input(kind: str, T: int, width: int, device: str, dtype=torch.float32) -> float:
    """A W8A8 projection's input quantized by the kernel that makes it, in one launch (``rms_norm_fp8``
    with and without a residual, ``silu_and_mul_fp8``; ``silu-one-pass``: its row read once), against the two launches it replaces (the norm
    or ``silu_and_mul`` kernel, then ``quantize_fp8_groups``). Returns the share of e4m3 codes that
    differ (0.0: the same bits), or 1.0 if the residual sum differs at all, a scale by more than one
    bf16 step, or a code by more than one e4m3 step. Compiled, the norm's sum of squares may be
    reduced in another order inside the larger kernel (a last-bit difference of the variance, as
    between the norm kernel and torch), which moves a rare value by one step; in the interpreter the
    two paths are the same bits. ``width``: the hidden size, or the intermediate size of the SiLU's
    [T, 2 * width] input."""
    from worker.kernels.activation import silu_and_mul, silu_and_mul_fp8
    from worker.kernels.fp8_quant import quantize_fp8_groups
    from worker.kernels.norm import fused_add_rms_norm, rms_norm, rms_norm_fp8

    gen = torch.Generator().manual_seed(T * 13 + width + len(kind))
    dev = torch.device(device)

    def rows(n: int) -> torch.Tensor:  # rows of different magnitudes, so the scales differ
        return (torch.randn(T, n, generator=gen) * torch.rand(T, 1, generator=gen) * 4).to(dtype).to(dev)

    residual = got_residual = want_residual = None
    if kind in ("silu", "silu-one-pass"):  # the row read twice, or once (held in registers)
        x = rows(2 * width)
        codes, scales = silu_and_mul_fp8(x, one_pass=kind == "silu-one-pass")
        want_codes, want_scales = quantize_fp8_groups(silu_and_mul(x))
    else:
        x = rows(width)
        weight = (1.0 + 0.1 * torch.randn(width, generator=gen)).to(dtype).to(dev)
        if kind == "norm-residual":
            residual = rows(width)
            normed, want_residual = fused_add_rms_norm(x, residual, weight, 1e-6)
        else:
            normed, want_residual = rms_norm(x, weight, 1e-6), x
        codes, scales, got_residual = rms_norm_fp8(x, residual, weight, 1e-6)
        want_codes, want_scales = quantize_fp8_groups(normed)
    if got_residual is not None and not torch.equal(got_residual, want_residual):
        return 1.0
    if not torch.allclose(scales, want_scales, rtol=2.0**-7, atol=0.0):
        return 1.0
    got, want = codes.view(torch.uint8).int(), want_codes.view(torch.uint8).int()
    # e4m3 is sign and magnitude: neighbouring values of one sign are neighbouring integers
    same_sign = (got >> 7) == (want >> 7)
    steps = torch.where(same_sign, ((got & 0x7F) - (want & 0x7F)).abs(), (got & 0x7F) + (want & 0x7F))
    if int(steps.max()) > 1:
        return 1.0
    return float((steps > 0).float().mean())


def block_quantize(w: torch.Tensor, bn: int = 128, bk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    N, K = w.shape
    s = torch.empty(math.ceil(N / bn), math.ceil(K / bk))
    q = torch.empty(N, K, dtype=torch.float8_e4m3fn)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            blk = w[i * bn : (i + 1) * bn, j * bk : (j + 1) * bk]
            s[i, j] = blk.abs().max() / 448.0
            q[i * bn : (i + 1) * bn, j * bk : (j + 1) * bk] = (blk / s[i, j]).to(torch.float8_e4m3fn)
    return q, s


def check_fp8_block(M: int, K: int, N: int, device: str, out_dtype=torch.float32) -> float:
    from worker.kernels.fp8_gemm import fp8_block_gemm

    gen = torch.Generator().manual_seed(M + K + N)
    q, s = block_quantize(torch.randn(N, K, generator=gen) * 0.05)
    x = torch.randn(M, K, generator=gen)
    xq, xs = quantize_fp8_per_token_block(x, 128)
    want = (xq.float() * xs.repeat_interleave(128, 1)[:, :K]) @ dequantize_fp8_block(q, s, (128, 128), torch.float32).t()
    dev = torch.device(device)
    got = fp8_block_gemm(xq.to(dev), xs.to(dev), q.to(dev), s.to(dev), (128, 128), out_dtype).float().cpu()
    return float((got - want).abs().max() / want.abs().max())


def check_fp8_channel(M: int, K: int, N: int, device: str, plan: tuple[int, int, int, int, int],
                      out_dtype=torch.float32) -> float:
    """``fp8_channel_gemm`` (per-token activation scales, per-row weight scales in the epilogue)
    against the de-quantized product in float32."""
    from worker.kernels.fp8_gemm import fp8_channel_gemm
    from worker.model.quant.linear import quantize_fp8_per_channel, quantize_fp8_per_token

    gen = torch.Generator().manual_seed(M * 7 + K + N)
    q, s = quantize_fp8_per_channel(torch.randn(N, K, generator=gen) * 0.05)
    xq, xs = quantize_fp8_per_token(torch.randn(M, K, generator=gen))
    want = (xq.float() * xs) @ (q.float() * s).t()
    dev = torch.device(device)
    got = fp8_channel_gemm(xq.to(dev), xs.to(dev), q.to(dev), s.to(dev), out_dtype, plan).float().cpu()
    return float((got - want).abs().max() / want.abs().max())


def check_fp8_moe(T: int, E: int, top_k: int, hidden: int, inter: int, per_block: bool, device: str,
                  dtype=torch.float32) -> float:
    """The fused MoE with FP8 experts (per-channel or 128x128-block scales) against the reference
    on the same experts de-quantized."""
    from worker.kernels.moe_gemm import fused_moe
    from worker.model.ops import select_experts
    from worker.model.ops import fused_moe as reference

    gen = torch.Generator().manual_seed(T + E + hidden + inter + per_block)

    def quantize(w: torch.Tensor):  # [E, N, K] -> e4m3 and scales
        if per_block:
            pairs = [block_quantize(w[e]) for e in range(w.shape[0])]
            return torch.stack([q for q, _ in pairs]), torch.stack([s for _, s in pairs])
        scale = w.abs().amax(dim=2, keepdim=True) / 448.0
        return (w / scale).to(torch.float8_e4m3fn), scale

    w13, s13 = quantize(torch.randn(E, 2 * inter, hidden, generator=gen) * hidden**-0.5)
    w2, s2 = quantize(torch.randn(E, hidden, inter, generator=gen) * inter**-0.5)
    x = torch.randn(T, hidden, generator=gen)
    weights, ids = select_experts(torch.randn(T, E, generator=gen), top_k, renormalize=True)
    block = (128, 128) if per_block else None
    want = reference(x, w13, w2, weights, ids, s13, s2, block)
    dev = torch.device(device)
    got = fused_moe(x.to(dev, dtype), w13.to(dev), w2.to(dev), weights.to(dev), ids.to(dev), s13.to(dev), s2.to(dev),
                    block).float().cpu()
    return float((got - want).abs().max() / want.abs().max())


INTERPRETER_CASES = {  # small shapes: the interpreter runs kernels in numpy
    "int4-gemm-g32": lambda: check_int4(5, 128, 96, 32, "gemm", "cpu"),
    "int4-gemm-g128-ragged": lambda: check_int4(20, 256, 160, 128, "gemm", "cpu"),
    "int4-gemv-g64": lambda: check_int4(3, 256, 128, 64, "gemv", "cpu"),
    "int4-gemm-offsets": lambda: check_int4(17, 128, 64, 32, "gemm", "cpu", offsets=True),
    "int4-gemv-offsets": lambda: check_int4(2, 128, 64, 32, "gemv", "cpu", offsets=True),
    # wide enough that each program takes all of K and stores y itself (no split, no atomics); ragged N
    "int4-gemv-g128-wide": lambda: check_int4(1, 256, 520, 128, "gemv", "cpu"),
    "int4-gemv-rows5-wide": lambda: check_int4(5, 256, 512, 64, "gemv", "cpu"),
    "int4-gemv-g12": lambda: check_int4(1, 96, 64, 12, "gemv", "cpu"),  # no K tile fits a group of 12
    "int4-gemv-per-channel": lambda: check_int4(1, 384, 96, 384, "gemv", "cpu"),
    "int8-gemv-offsets-wide": lambda: check_int4(1, 128, 512, 32, "gemv", "cpu", offsets=True, bits=8),
    "int8-gemm-g32": lambda: check_int4(9, 128, 96, 32, "gemm", "cpu", bits=8),
    "int8-gemv-g128": lambda: check_int4(3, 256, 128, 128, "gemv", "cpu", bits=8),
    "int8-gemm-offsets": lambda: check_int4(17, 128, 64, 32, "gemm", "cpu", offsets=True, bits=8),
    "fp8-block-gemm": lambda: check_fp8_block(20, 384, 200, "cpu"),
    # ragged in every dimension: rows, columns and a last K step past the end
    "fp8-channel-gemm-ragged": lambda: check_fp8_channel(20, 200, 72, "cpu", (16, 32, 64, 4, 2)),
    "fp8-channel-gemm-one-tile": lambda: check_fp8_channel(3, 128, 64, "cpu", (16, 64, 128, 4, 3)),
    "fp8-quant-token": lambda: check_fp8_quant(6, 200, None, "cpu", representable=True),
    "fp8-quant-token-long": lambda: check_fp8_quant(3, 2600, None, "cpu", representable=True),
    "fp8-quant-blocks": lambda: check_fp8_quant(5, 384, 128, "cpu", representable=True),
    "fp8-quant-blocks-ragged": lambda: check_fp8_quant(4, 300, 128, "cpu", representable=True),
    "fp8-quant-static": lambda: check_fp8_quant(3, 96, None, "cpu", static=True, representable=True),
    # the norm's and the SiLU's quantization in one launch; a ragged last block of the SiLU's row
    "fp8-norm-quant": lambda: check_fp8_fused_input("norm", 5, 200, "cpu"),
    "fp8-norm-residual-quant": lambda: check_fp8_fused_input("norm-residual", 4, 256, "cpu"),
    "fp8-silu-quant": lambda: check_fp8_fused_input("silu", 3, 2304, "cpu"),
    "fp8-silu-quant-one-pass": lambda: check_fp8_fused_input("silu-one-pass", 3, 2304, "cpu"),
    "fp8-moe-channel": lambda: check_fp8_moe(5, 4, 2, 64, 48, False, "cpu"),
    "fp8-moe-block": lambda: check_fp8_moe(9, 4, 2, 256, 128, True, "cpu"),
}

if __name__ == "__main__":  # run under TRITON_INTERPRET=1: one JSON line of errors
    import json

    print(json.dumps({name: case() for name, case in INTERPRETER_CASES.items()}))
