"""Fused mixture of experts on CUDA: two grouped GEMMs over expert-sorted rows (``moe_align``).

  rows       = T * top_k (token, expert) pairs, sorted by expert, padded per expert to BLOCK_M
  gemm 1     x[token] @ w13[e].T          -> [rows, 2I]
  activation silu(gate) * up               -> [rows, I]
  gemm 2     h @ w2[e].T * routing weight  -> [rows, hidden] (float32)
  sum over each token's top_k rows         -> [T, hidden], in x's dtype (one launch: _sum_rows_kernel)

Same contract as ``worker.model.ops.fused_moe`` (the CPU reference and the oracle of this kernel).
FP8 experts (e4m3 weights with per-channel or 128x128-block scales, as FP8 checkpoints ship them)
are de-quantized tile by tile inside the GEMM (weights read as one byte each; activations stay in
the model's dtype). No host synchronisation: launch sizes depend only on T, so a decode step can be graph-captured.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.activation import silu_and_mul
from worker.kernels.errors import KernelInputError
from worker.kernels.moe_align_kernel import align


@triton.jit
def _moe_gemm_kernel(
    a_ptr,  # [A rows, K]
    b_ptr,  # [E, N, K]
    c_ptr,  # [num_pairs, N]
    weights_ptr,  # [num_pairs] float32 routing weights
    sorted_ids_ptr,  # [P] int32 pair indices, num_pairs = padding
    block_experts_ptr,  # [P // BLOCK_M] int32
    num_rows_ptr,  # [1] int32 padded rows in use
    scale_ptr,  # FP8 weights: [E, N, 1] per channel, or [E, cdiv(N, SCALE_BN), cdiv(K, SCALE_BK)] per block
    num_pairs,
    N,
    K,
    stride_am,
    stride_be,
    stride_bn,
    stride_cm,
    stride_se,
    stride_sn,
    stride_sk,
    A_ROW_DIV: tl.constexpr,  # a row of pair p is p // A_ROW_DIV (top_k for gemm 1, 1 for gemm 2)
    MUL_WEIGHT: tl.constexpr,
    EXACT_FP32: tl.constexpr,
    SCALE_MODE: tl.constexpr,  # 0: float weights, 1: FP8 per channel, 2: FP8 per block
    SCALE_BN: tl.constexpr,
    SCALE_BK: tl.constexpr,  # a multiple of BLOCK_K: one scale per tile along K
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Grid (P // BLOCK_M, cdiv(N, BLOCK_N)): BLOCK_M sorted rows of one expert x BLOCK_N outputs."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_rows_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + offs_m)
    row_valid = pair < num_pairs
    a_row = (pair // A_ROW_DIV).to(tl.int64)
    expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_base = a_ptr + a_row[:, None] * stride_am
    b_base = b_ptr + expert * stride_be + offs_n[None, :].to(tl.int64) * stride_bn
    s_base = scale_ptr + expert * stride_se + (offs_n[None, :] // SCALE_BN).to(tl.int64) * stride_sn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_valid = (k0 + offs_k) < K
        a = tl.load(a_base + (k0 + offs_k)[None, :], mask=row_valid[:, None] & k_valid[None, :], other=0.0)
        b = tl.load(b_base + (k0 + offs_k)[:, None], mask=k_valid[:, None] & n_valid[None, :], other=0.0)
        if SCALE_MODE == 2:
            s = tl.load(s_base + (k0 // SCALE_BK) * stride_sk, mask=n_valid[None, :], other=0.0)
            b = (b.to(tl.float32) * s).to(a.dtype)
        elif SCALE_MODE == 1:
            b = b.to(a.dtype)
        if EXACT_FP32:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
    if SCALE_MODE == 1:
        acc = acc * tl.load(s_base, mask=n_valid[None, :], other=0.0)
    if MUL_WEIGHT:
        acc = acc * tl.load(weights_ptr + pair, mask=row_valid, other=0.0)[:, None]
    c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=row_valid[:, None] & n_valid[None, :])


def _gemm(a, b, c, weights, sorted_ids, block_experts, num_rows, a_row_div: int, mul_weight: bool, block_m: int,
          scale: torch.Tensor | None = None, block: tuple[int, int] | None = None):
    num_pairs, n = c.shape
    k = a.shape[1]
    block_n, block_k = 64, 64 if k >= 64 else 32
    mode, bn, bk = 0, 1, 1
    if scale is not None:
        mode = 1 if block is None else 2
        if block is not None:
            bn, bk = block
            while bk % block_k:  # one scale per tile along K
                block_k //= 2
            if block_k < 16:
                raise KernelInputError(f"fused_moe: FP8 scale blocks of {bk} columns are too narrow")
        scale_strides = scale.stride()
    else:
        scale, scale_strides = weights, (0, 0, 0)  # unused
    grid = (sorted_ids.shape[0] // block_m, triton.cdiv(n, block_n))
    _moe_gemm_kernel[grid](
        a, b, c, weights, sorted_ids, block_experts, num_rows, scale, num_pairs, n, k,
        a.stride(0), b.stride(0), b.stride(1), c.stride(0), *scale_strides[:3],
        A_ROW_DIV=a_row_div, MUL_WEIGHT=mul_weight, EXACT_FP32=a.dtype == torch.float32,
        SCALE_MODE=mode, SCALE_BN=bn, SCALE_BK=bk,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )


def fused_moe(
    x: torch.Tensor,  # [T, hidden]
    w13: torch.Tensor,  # [E, 2I, hidden]: gate rows, then up rows
    w2: torch.Tensor,  # [E, hidden, I]
    topk_weights: torch.Tensor,  # [T, k]
    topk_ids: torch.Tensor,  # [T, k]
    w13_scale: torch.Tensor | None = None,  # FP8 experts: [E, 2I, 1] per channel, [E, 2I/bn, hidden/bk] per block
    w2_scale: torch.Tensor | None = None,
    block: tuple[int, int] | None = None,
) -> torch.Tensor:  # [T, hidden], x's dtype
    """The mixture of SiLU-gated experts of every token (see the module docstring)."""
    T, hidden = x.shape
    E, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    if w13.shape[2] != hidden or w2.shape != (E, hidden, two_i // 2) or topk_weights.shape != topk_ids.shape:
        raise KernelInputError(
            f"fused_moe shapes: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, w2 {tuple(w2.shape)}, "
            f"weights {tuple(topk_weights.shape)}, ids {tuple(topk_ids.shape)}")
    if T == 0:
        return torch.zeros_like(x)
    if (w13_scale is None) != (w13.element_size() != 1) or (w2_scale is None) != (w2.element_size() != 1):
        raise KernelInputError("fused_moe: FP8 expert weights need their scales (and float ones none)")
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    block_m = 16 if T * top_k <= 1024 else 64  # small steps: less padding per expert
    sorted_ids, block_experts, num_rows = align(topk_ids, E, block_m)  # one launch at decode sizes
    weights = topk_weights.reshape(-1).float().contiguous()
    inter = torch.empty((T * top_k, two_i), dtype=x.dtype, device=x.device)
    _gemm(x, w13, inter, weights, sorted_ids, block_experts, num_rows, top_k, False, block_m, w13_scale, block)
    h = silu_and_mul(inter)
    out = torch.empty((T * top_k, hidden), dtype=torch.float32, device=x.device)
    _gemm(h, w2, out, weights, sorted_ids, block_experts, num_rows, 1, True, block_m, w2_scale, block)
    return _sum_rows(out, T, top_k, x.dtype)


@triton.jit
def _sum_rows_kernel(rows_ptr, y_ptr, HIDDEN: tl.constexpr, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (T, cdiv(HIDDEN, BLOCK)): y[t] = sum of rows t * TOP_K .. + TOP_K - 1 (float32, in slot
    order, as torch sums them), cast once to y's dtype."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < HIDDEN
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in tl.static_range(TOP_K):
        acc += tl.load(rows_ptr + (t * TOP_K + k) * HIDDEN + cols, mask=mask, other=0.0)
    tl.store(y_ptr + t * HIDDEN + cols, acc.to(y_ptr.dtype.element_ty), mask=mask)


def _sum_rows(rows: torch.Tensor, tokens: int, top_k: int, dtype: torch.dtype) -> torch.Tensor:
    """Each token's top_k float32 rows [T * top_k, hidden] summed and cast: one launch instead of a
    sum and a cast."""
    hidden = rows.shape[1]
    y = torch.empty((tokens, hidden), dtype=dtype, device=rows.device)
    block = min(1024, triton.next_power_of_2(hidden))
    _sum_rows_kernel[(tokens, triton.cdiv(hidden, block))](rows, y, HIDDEN=hidden, TOP_K=top_k, BLOCK=block,
                                                          num_warps=4)
    return y
