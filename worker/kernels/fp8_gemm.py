"""FP8 GEMMs (W8A8) in Triton: ``y = (a * a_scale) @ (b * b_scale).T`` with e4m3 ``a`` [M, K] and
``b`` [N, K].

Block-scaled (the layout of Qwen3-*-FP8 and DeepSeek-V3): ``a`` scaled per token and per
``block_k`` input columns, ``b`` per (block_n x block_k) block. Each K step of the kernel is one
scale block: the e4m3 tile product runs on the tensor cores in float32 and is scaled by its row and
column scales before it is added.

Per channel (``fp8_channel_gemm``): ``a`` scaled per token, ``b`` per output row, both applied once
to the float32 sums in the epilogue; the tile plan is chosen by the caller (measured per card by
``bench/fp8_gemm_sweep.py`` against ``torch._scaled_mm``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.errors import KernelInputError


@triton.jit
def _fp8_block_gemm_kernel(
    a_ptr, as_ptr, b_ptr, bs_ptr, y_ptr, M, N, K,
    stride_am, stride_asm, stride_bn, stride_bsn, stride_ym,
    SCALE_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PER_CHANNEL: tl.constexpr = False,
):
    """Grid (M tiles, N tiles), M fastest, so the programs that share a weight tile run together.
    PER_CHANNEL: one scale per row of a (``as_ptr``, stride_asm) and of b (``bs_ptr``, stride_bsn)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if PER_CHANNEL:
            acc = tl.dot(a, b, acc)
        else:
            a_s = tl.load(as_ptr + offs_m * stride_asm + kb, mask=m_ok, other=0.0)
            b_s = tl.load(bs_ptr + (offs_n // SCALE_N) * stride_bsn + kb, mask=n_ok, other=0.0)
            acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
    if PER_CHANNEL:
        a_s = tl.load(as_ptr + offs_m * stride_asm, mask=m_ok, other=0.0)
        b_s = tl.load(bs_ptr + offs_n * stride_bsn, mask=n_ok, other=0.0)
        acc = acc * a_s[:, None] * b_s[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def fp8_block_gemm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                   block: tuple[int, int], out_dtype: torch.dtype) -> torch.Tensor:
    """a e4m3 [M, K], a_scale float32 [M, ceil(K / bk)], b e4m3 [N, K], b_scale float32
    [ceil(N / bn), ceil(K / bk)] -> [M, N] in ``out_dtype``. ``bk`` must be a power of two >= 16."""
    bn, bk = block
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise KernelInputError(f"a [M, K] and b [N, K] must share K, got {tuple(a.shape)} and {tuple(b.shape)}")
    M, K = a.shape
    N = b.shape[0]
    if bk < 16 or bk & (bk - 1):
        raise KernelInputError(f"block_k must be a power of two >= 16, got {bk}")
    kb = triton.cdiv(K, bk)
    if tuple(a_scale.shape) != (M, kb) or tuple(b_scale.shape) != (triton.cdiv(N, bn), kb):
        raise KernelInputError(f"scales must be [{M}, {kb}] and [{triton.cdiv(N, bn)}, {kb}], got "
                               f"{tuple(a_scale.shape)} and {tuple(b_scale.shape)}")
    for name, t in (("a", a), ("b", b), ("a_scale", a_scale), ("b_scale", b_scale)):
        if t.stride(-1) != 1:
            raise KernelInputError(f"{name} must have a contiguous last dimension")
    y = torch.empty(M, N, dtype=out_dtype, device=a.device)
    block_m = 16 if M <= 16 else (64 if M <= 64 else 128)
    block_n = min(128, bn) if bn & (bn - 1) == 0 else 64
    if bn % block_n:
        raise KernelInputError(f"block_n {bn} must be a multiple of {block_n}")
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _fp8_block_gemm_kernel[grid](a, a_scale, b, b_scale, y, M, N, K, a.stride(0), a_scale.stride(0), b.stride(0),
                                 b_scale.stride(0), y.stride(0), SCALE_N=bn, BLOCK_M=block_m, BLOCK_N=block_n,
                                 BLOCK_K=bk, num_warps=4 if block_m <= 64 else 8, num_stages=3)
    return y


def fp8_channel_gemm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor,
                     out_dtype: torch.dtype, plan: tuple[int, int, int, int, int]) -> torch.Tensor:
    """a e4m3 [M, K] with float32 a_scale [M, 1] (per token), b e4m3 [N, K] with float32 b_scale
    [N, 1] or [N] (per output channel) -> [M, N] in ``out_dtype``. ``plan``: (block_m, block_n,
    block_k, num_warps, num_stages), tile sides powers of two >= 16."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise KernelInputError(f"a [M, K] and b [N, K] must share K, got {tuple(a.shape)} and {tuple(b.shape)}")
    M, K = a.shape
    N = b.shape[0]
    if a_scale.numel() != M or b_scale.numel() != N:
        raise KernelInputError(f"per-channel scales must hold {M} and {N} values, got {a_scale.numel()} and "
                               f"{b_scale.numel()}")
    if a.stride(-1) != 1 or b.stride(-1) != 1:
        raise KernelInputError("a and b must have a contiguous last dimension")
    block_m, block_n, block_k, warps, stages = plan
    if min(block_m, block_n, block_k) < 16 or any(v & (v - 1) for v in (block_m, block_n, block_k)):
        raise KernelInputError(f"tile sides must be powers of two >= 16, got {plan}")
    a_scale, b_scale = a_scale.reshape(M), b_scale.reshape(N)
    y = torch.empty(M, N, dtype=out_dtype, device=a.device)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _fp8_block_gemm_kernel[grid](a, a_scale, b, b_scale, y, M, N, K, a.stride(0), a_scale.stride(0), b.stride(0),
                                 b_scale.stride(0), y.stride(0), SCALE_N=1, BLOCK_M=block_m, BLOCK_N=block_n,
                                 BLOCK_K=block_k, PER_CHANNEL=True, num_warps=warps, num_stages=stages)
    return y
