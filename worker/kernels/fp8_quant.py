"""Activation quantization to FP8 (e4m3) in one kernel: each token's row, or each ``group``-column
block of it, gets the scale ``max(amax / 448, 1e-12)`` and is divided by it, clamped and cast.

The W8A8 layers (``Fp8Linear``) quantize their input before every ``torch._scaled_mm``. Written as
torch operations that is eight kernels per layer, each reading or writing the whole activation in
float32 (``abs``, ``amax``, the division, the clamp, the cast...): at a 2,048-token prefill chunk of
the Llama-3.1-8B shape about 0.3 GB of traffic per projection, more than the FP8 GEMM saves over
bf16, and at batch 1 a thousand launches a step. Here one program per (row, group) reads the row in
its own precision twice (the amax, then the cast; the second read comes from L2) and writes one byte
per value and one float per group. The arithmetic is the torch reference's
(``worker.model.quant.linear.quantize_fp8_per_token``): float32 amax, the same clamp, a true
division (``div_rn``: Triton's ``/`` is an approximate one on the GPU), round-to-nearest-even into
e4m3.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.errors import KernelInputError

FP8 = torch.float8_e4m3fn  # the kernel's 448 is this type's largest finite value


@triton.jit
def e4m3_scale(amax):
    """A row's (or group's) scale from its float32 amax: ``max(amax / 448, 1e-12)``, a true division
    (Triton's ``/`` is an approximate one on the GPU), as the torch reference computes it."""
    return tl.maximum(tl.math.div_rn(amax, 448.0), 1e-12)


@triton.jit
def e4m3_codes(x, scale, dtype: tl.constexpr):
    """float32 values divided by their scale, clamped to e4m3's range, rounded to nearest even."""
    return tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -448.0), 448.0).to(dtype)


@triton.jit
def _quant_kernel(
    x_ptr, q_ptr, s_ptr, static_ptr, K, group, stride_x, stride_q, stride_s,
    STATIC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Grid (rows, groups per row): the program's group is columns [g * group, min(K, (g + 1) * group))."""
    row = tl.program_id(0)
    g = tl.program_id(1)
    start = g * group
    end = tl.minimum(K, start + group)
    x_row = x_ptr + row.to(tl.int64) * stride_x
    q_row = q_ptr + row.to(tl.int64) * stride_q
    if STATIC:
        scale = tl.load(static_ptr).to(tl.float32)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for k0 in range(start, end, BLOCK):
            offs = k0 + tl.arange(0, BLOCK)
            amax = tl.maximum(amax, tl.abs(tl.load(x_row + offs, mask=offs < end, other=0.0).to(tl.float32)))
        scale = e4m3_scale(tl.max(amax, axis=0))
    for k0 in range(start, end, BLOCK):
        offs = k0 + tl.arange(0, BLOCK)
        ok = offs < end
        x = tl.load(x_row + offs, mask=ok, other=0.0).to(tl.float32)
        tl.store(q_row + offs, e4m3_codes(x, scale, q_ptr.dtype.element_ty), mask=ok)
    tl.store(s_ptr + row.to(tl.int64) * stride_s + g, scale)


def quantize_fp8_groups(x: torch.Tensor, group: int | None = None,
                        static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, K] -> (e4m3 [T, K], float32 scales [T, ceil(K / group)]) with ``x ~= q * scale`` per
    token and ``group``-column block (``group`` None: the whole row, scales [T, 1]). With
    ``static_scale`` (one float), every row is divided by it and it is returned as each row's scale."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise KernelInputError(f"FP8 quantization takes a row-major [T, K] matrix, got shape {tuple(x.shape)} "
                               f"with strides {x.stride()}")
    if static_scale is not None and (group not in (None, x.shape[1]) or static_scale.numel() != 1):
        raise KernelInputError("a static FP8 input scale is one value for whole rows")
    T, width = x.shape
    group = width if group is None else group
    if group <= 0:
        raise KernelInputError(f"FP8 quantization groups must hold at least one column, got {group}")
    groups = triton.cdiv(width, group) if width else 0
    q = torch.empty(T, width, dtype=FP8, device=x.device)
    scales = torch.empty(T, groups, dtype=torch.float32, device=x.device)
    if T and width:
        block = min(1024, triton.next_power_of_2(min(group, width)))
        _quant_kernel[(T, groups)](x, q, scales, static_scale if static_scale is not None else scales, width, group,
                                   x.stride(0), q.stride(0), scales.stride(0), STATIC=static_scale is not None,
                                   BLOCK=block, num_warps=4 if block >= 512 else 1)
    return q, scales
