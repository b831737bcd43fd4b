"""Residual add + RMSNorm fused into the decode GEMV's prologue: ``y = rmsnorm(x + residual) @ W.T``
for x [M, K] with M <= 8 rows, and the new residual ``x + residual``, in one launch.

Before a decoder layer's qkv and gate_up projections the model adds the residual and normalises; at
a few rows that is a separate launch whose output is read back at once. Here every program first
reads the M full rows (x and residual: 16 KiB a row at K = 4096 in bf16, from L2 after the first
programs) for each row's sum of squares, then rebuilds the normed input of its own K range step by
step and runs the decode GEMV's loop, split-K ticket scheme and epilogue (``decode_gemv.py``)
unchanged. The programs of the first column tile write the new residual, each its K range, to a
separate tensor (never over the inputs: other programs are still reading them).

Rounding follows ``norm.fused_add_rms_norm`` then ``decode_gemv``: the sum in the activations'
dtype, the statistics in float32, the normed value rounded to the dtype, times the norm weight,
rounded again, and that is the GEMV's input. Only the order of the float32 sum of squares differs,
so results equal the unfused path's to rounding.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.decode_gemv import _check, _dot_step, _finish, plan_for, workspace, workspace_need
from worker.kernels.decode_gemv_config import BLOCK_M, GemvPlan, k_per_split
from worker.kernels.errors import KernelInputError


@triton.jit
def _summed(x_ptr, r_ptr, rows, offs_k, mask, stride_xm, stride_rm, HAS_RESIDUAL: tl.constexpr):
    """x (+ residual) over [rows, offs_k], rounded to the activations' dtype as a torch add would be."""
    x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :], mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + rows[:, None] * stride_rm + offs_k[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
    return x


@triton.jit
def _norm_gemv_kernel(
    x_ptr, r_ptr, g_ptr, w_ptr, b_ptr, y_ptr, r_out_ptr, part_ptr, ticket_ptr,
    M, N, K, K_PER_SPLIT, eps,
    stride_xm, stride_rm, stride_rom, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    SILU: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr, EXACT_FP32: tl.constexpr,
):
    """Grid (cdiv(N, BLOCK_N), SPLIT_K), as ``_decode_gemv_kernel``; g is the norm weight [K]."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    r_ok = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < N
    # each row's mean square over all of K: every program needs it before its first step
    sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    for kk in range(0, K, BLOCK_K):
        offs_k = kk + tl.arange(0, BLOCK_K)
        s = _summed(x_ptr, r_ptr, rows, offs_k, r_ok[:, None] & (offs_k < K)[None, :], stride_xm, stride_rm,
                    HAS_RESIDUAL).to(tl.float32)
        sum_sq += tl.sum(s * s, axis=1)
    rstd = tl.math.rsqrt(sum_sq / K + eps)[:, None]
    k_lo = pid_k * K_PER_SPLIT
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
    up_rows = w_ptr + (cols + N).to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kk in range(0, K_PER_SPLIT, BLOCK_K):
        offs_k = k_lo + kk + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        mask = r_ok[:, None] & k_ok[None, :]
        s = _summed(x_ptr, r_ptr, rows, offs_k, mask, stride_xm, stride_rm, HAS_RESIDUAL)
        if HAS_RESIDUAL:
            if pid_n == 0:  # the first column tile's programs write the new residual, each its K range
                tl.store(r_out_ptr + rows[:, None] * stride_rom + offs_k[None, :], s, mask=mask)
        g = tl.load(g_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
        # rounded where the norm kernel rounds: the normed value, then its product with the weight
        normed = (s.to(tl.float32) * rstd).to(s.dtype).to(tl.float32)
        a = (normed * g[None, :]).to(s.dtype)
        acc, acc_up = _dot_step(a, w_rows, up_rows, offs_k, n_ok, k_ok, acc, acc_up, SILU, EVEN_N, EVEN_K,
                                EXACT_FP32)
    _finish(acc, acc_up, b_ptr, y_ptr, part_ptr, ticket_ptr, pid_n, pid_k, rows, cols, r_ok, n_ok, N, stride_ym,
            BLOCK_M, BLOCK_N, SPLIT_K, SILU, HAS_BIAS)


def rms_norm_decode_gemv(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    silu: bool = False,
    plan: GemvPlan | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(decode_gemv(rmsnorm(s) * norm_weight, weight, bias, silu), s)`` with ``s = x + residual``
    (``s = x`` without a residual: a model's first layer), in one launch.

    x, residual: [M, K] (1 <= M <= 8) with contiguous last dims; norm_weight: contiguous [K]; weight,
    bias, silu and plan as ``decode_gemv``'s. One float dtype for all. Returns new tensors (the
    output and ``s``); without a residual ``s`` is ``x`` itself, not a copy. Inputs are not modified.
    A split plan needs the device workspace reserved first (``reserve_workspace``) under capture.
    """
    n_out = _check(x, weight, bias, silu, None)
    M, K = x.shape
    if residual is not None and (residual.shape != x.shape or residual.stride(-1) != 1
                                 or residual.dtype != x.dtype or residual.device != x.device):
        raise KernelInputError(f"residual must be [{M}, {K}] {x.dtype} on {x.device} with a contiguous last dim, "
                               f"got {tuple(residual.shape)} {residual.dtype}")
    if (norm_weight.shape != (K,) or norm_weight.stride(0) != 1 or norm_weight.dtype != x.dtype
            or norm_weight.device != x.device):
        raise KernelInputError(f"norm_weight must be contiguous [{K}] {x.dtype} on {x.device}, "
                               f"got {tuple(norm_weight.shape)} {norm_weight.dtype}")
    plan = plan_for(weight, silu, plan)
    out = torch.empty(M, n_out, dtype=x.dtype, device=x.device)
    residual_out = x if residual is None else torch.empty(M, K, dtype=x.dtype, device=x.device)
    if M == 0 or n_out == 0:
        if residual is not None and M:
            torch.add(x, residual, out=residual_out)
        return out, residual_out
    tiles = triton.cdiv(n_out, plan.block_n)
    per = k_per_split(K, plan)
    if plan.split_k > 1:
        space = workspace(x.device)
        space.reserve(*workspace_need(weight, silu, plan))
        partials, tickets = space.partials, space.tickets
    else:
        partials, tickets = out, out  # never read: SPLIT_K == 1 compiles the split path away
    r = x if residual is None else residual  # never read without HAS_RESIDUAL
    _norm_gemv_kernel[(tiles, plan.split_k)](
        x, r, norm_weight, weight, bias if bias is not None else weight, out, residual_out, partials, tickets,
        M, n_out, K, per, eps,
        x.stride(0), r.stride(0), residual_out.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, SPLIT_K=plan.split_k,
        SILU=silu, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        EVEN_N=n_out % plan.block_n == 0, EVEN_K=K % plan.block_k == 0 and per * plan.split_k == K,
        EXACT_FP32=x.dtype == torch.float32,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    return out, residual_out
