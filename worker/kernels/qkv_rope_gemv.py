"""The decode step's qkv projection with the rotary embedding and the KV-cache write in its epilogue:
one launch a layer where the decode GEMV and ``rotary_and_cache`` took two.

A program owns ``block_n`` dims of one head's first half and the same dims of its second half (the
neox pairs: dim j turns with dim j + D/2), so it holds both members of every pair it rotates. It
streams those 2 x ``block_n`` weight rows over K as the SiLU GEMV streams its gate and up rows, then
writes q heads rotated into ``q_out``, k heads rotated into the paged key cache at the token's slot,
and v heads as they are into the value cache (a negative slot writes nothing, as in
``reshape_and_cache``). Rounding: the projection (bias added) rounded to the activations' dtype, then
the rotation as ``rotary.py`` rounds it, so q and the cache hold what the decode GEMV followed by
``rotary_and_cache`` leaves there, up to the order of the projection's float32 sums.

Full-width neox rotary, float caches of the activations' dtype, no split-K: the layer falls back to
the two launches otherwise (``fusable``).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from worker.kernels.decode_gemv import _check, _dots, _k_step, _load_tiles, _load_x
from worker.kernels.decode_gemv_config import BLOCK_M, GemvPlan
from worker.kernels.errors import KernelInputError
from worker.kernels.kv_cache import reshape_and_cache
from worker.kernels.pdl import launch_options, use_pdl
from worker.kernels.rotary import _check_inputs as _check_rotary

# 16 dims of each half: 2 x 16 weight rows a program, the bytes per K step of the plain GEMV's qkv
# plan (32 rows), and as many programs (Llama-3.1-8B: 48 heads x 4)
DEFAULT_PLAN = GemvPlan(block_n=16, block_k=256, num_warps=2, num_stages=4, split_k=1)
MIN_DOT_N = 16  # a compiled tl.dot needs 16 columns; the interpreter takes fewer


def plan_from_env(text: str | None = None) -> GemvPlan:
    """``WARD_QKV_ROPE_PLAN`` (``block_n:block_k:warps:stages``, for tuning on a card) or the default."""
    text = os.environ.get("WARD_QKV_ROPE_PLAN", "") if text is None else text
    if not text.strip():
        return DEFAULT_PLAN
    try:
        block_n, block_k, warps, stages = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"WARD_QKV_ROPE_PLAN {text!r} is not block_n:block_k:warps:stages")
    if min(block_n, block_k, warps, stages) < 1 or block_n & (block_n - 1) or block_k & (block_k - 1):
        raise ValueError(f"WARD_QKV_ROPE_PLAN {text!r}: sizes >= 1, tile sides powers of two")
    return GemvPlan(block_n, block_k, warps, stages, 1)


PLAN = plan_from_env()


def block_n_for(head_dim: int, plan: GemvPlan = PLAN) -> int:
    """The dims of a half a program takes: the plan's, or the whole half when that is narrower."""
    return min(plan.block_n, head_dim // 2)


def fusable(head_dim: int, rotary_dim: int, device: torch.device, plan: GemvPlan = PLAN) -> bool:
    """Whether a layer of this head size can take the fused launch on ``device`` (compiled kernels
    need ``MIN_DOT_N`` dims a tile; Triton's interpreter on the CPU does not)."""
    if rotary_dim != head_dim or head_dim % 2:
        return False
    half, block_n = head_dim // 2, block_n_for(head_dim, plan)
    return half % block_n == 0 and (device.type != "cuda" or block_n >= MIN_DOT_N)


@triton.jit
def _qkv_rope_cache_kernel(
    x_ptr, w_ptr, b_ptr, positions_ptr, cos_sin_ptr, q_ptr, key_cache_ptr, value_cache_ptr, slot_ptr,
    M, K, stride_xm, stride_wn, stride_cs_pos, stride_q_tok, stride_q_head,
    stride_kc_block, stride_kc_slot, stride_kc_head, stride_vc_block, stride_vc_slot, stride_vc_head,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr, EXACT_FP32: tl.constexpr, USE_PDL: tl.constexpr = False,
):
    """Grid (heads x HEAD_DIM / 2 / BLOCK_N,), heads = q, then k, then v heads as the fused weight
    orders its rows. The branches on the head are uniform across a program."""
    HALF: tl.constexpr = HEAD_DIM // 2
    TILES_PER_HEAD: tl.constexpr = HALF // BLOCK_N
    pid = tl.program_id(0)
    head = pid // TILES_PER_HEAD
    dims = (pid % TILES_PER_HEAD) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    r_ok = rows < M
    n_ok = dims < HALF
    first = head * HEAD_DIM + dims
    w_first = w_ptr + first.to(tl.int64)[:, None] * stride_wn
    w_second = w_ptr + (first + HALF).to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    ones = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if USE_PDL:  # the first weight tiles (no kernel writes them) while the kernel before still runs
        offs_k = tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w, w2 = _load_tiles(w_first, w_second, offs_k, n_ok, k_ok, True, True, EVEN_K)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
        x = _load_x(x_ptr, x_ptr, rows, r_ok, offs_k, k_ok, stride_xm, ones, False)
        acc, acc2 = _dots(x, w, w2, acc, acc2, True, EXACT_FP32)
        for kk in range(BLOCK_K, K, BLOCK_K):
            acc, acc2 = _k_step(x_ptr, x_ptr, w_first, w_second, rows, r_ok, n_ok, kk, K, stride_xm, ones,
                                acc, acc2, BLOCK_K, True, True, EVEN_K, EXACT_FP32, False)
    else:
        for kk in range(0, K, BLOCK_K):
            acc, acc2 = _k_step(x_ptr, x_ptr, w_first, w_second, rows, r_ok, n_ok, kk, K, stride_xm, ones,
                                acc, acc2, BLOCK_K, True, True, EVEN_K, EXACT_FP32, False)
    dtype = q_ptr.dtype.element_ty
    if HAS_BIAS:
        acc += tl.load(b_ptr + first).to(tl.float32)[None, :]
        acc2 += tl.load(b_ptr + first + HALF).to(tl.float32)[None, :]
    # the projection's output, rounded as the GEMV would write it
    x1 = acc.to(dtype).to(tl.float32)
    x2 = acc2.to(dtype).to(tl.float32)
    keep = r_ok[:, None]
    if head < NUM_Q_HEADS + NUM_KV_HEADS:
        # rotate as rotary.py rounds it: cos/sin to x's dtype, each product, then the sum
        pos = tl.load(positions_ptr + rows, mask=r_ok, other=0).to(tl.int64)
        where = cos_sin_ptr + pos[:, None] * stride_cs_pos + dims[None, :]
        c = tl.load(where, mask=keep, other=0.0).to(dtype).to(tl.float32)
        s = tl.load(where + HALF, mask=keep, other=0.0).to(dtype).to(tl.float32)
        out1 = (x1 * c).to(dtype).to(tl.float32) - (x2 * s).to(dtype).to(tl.float32)
        out2 = (x2 * c).to(dtype).to(tl.float32) + (x1 * s).to(dtype).to(tl.float32)
    else:
        out1 = x1
        out2 = x2
    if head < NUM_Q_HEADS:
        q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_q_tok + head * stride_q_head + dims[None, :]
        tl.store(q_rows, out1.to(dtype), mask=keep)
        tl.store(q_rows + HALF, out2.to(dtype), mask=keep)
    else:
        slot = tl.load(slot_ptr + rows, mask=r_ok, other=-1).to(tl.int64)
        written = (r_ok & (slot >= 0))[:, None]
        slot = tl.maximum(slot, 0)  # padding rows write nothing; keep their addresses in range anyway
        page = (slot // PAGE_SIZE)[:, None]
        offset = (slot % PAGE_SIZE)[:, None]
        if head < NUM_Q_HEADS + NUM_KV_HEADS:
            dst = (key_cache_ptr + page * stride_kc_block + offset * stride_kc_slot
                   + (head - NUM_Q_HEADS) * stride_kc_head + dims[None, :])
            tl.store(dst, out1.to(dtype), mask=written)
            tl.store(dst + HALF, out2.to(dtype), mask=written)
        else:
            dst = (value_cache_ptr + page * stride_vc_block + offset * stride_vc_slot
                   + (head - NUM_Q_HEADS - NUM_KV_HEADS) * stride_vc_head + dims[None, :])
            tl.store(dst, out1.to(dtype), mask=written)
            tl.store(dst + HALF, out2.to(dtype), mask=written)


def decode_qkv_rope_cache(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    plan: GemvPlan | None = None,
) -> torch.Tensor:
    """q [M, num_heads, head_dim] of ``x @ weight.T + bias`` neox-rotated at ``positions``; the rotated
    k and the v of the same projection written into the paged caches at ``slot_mapping``.

    x [M <= 8, K]; weight [(num_heads + 2 * num_kv_heads) * head_dim, K], the fused qkv layout;
    cos_sin_cache [max_position, head_dim] (cos, then sin); caches [num_blocks, block_size,
    num_kv_heads, head_dim] of x's dtype; slot_mapping >= M entries, negative = write nothing.
    """
    plan = plan or PLAN
    n_out = _check(x, weight, bias, False, None)
    if n_out != (num_heads + 2 * num_kv_heads) * head_dim:
        raise KernelInputError(f"weight has {n_out} rows, not ({num_heads} + 2 x {num_kv_heads}) x {head_dim}")
    if not fusable(head_dim, cos_sin_cache.shape[-1], x.device, plan):
        raise KernelInputError(f"head_dim {head_dim} with rotary width {cos_sin_cache.shape[-1]} cannot take "
                               f"the fused launch on {x.device.type} (fusable)")
    if key_cache.dtype != x.dtype or value_cache.dtype != x.dtype:
        raise KernelInputError(f"the fused qkv launch takes caches of x's dtype {x.dtype}, got {key_cache.dtype}")
    M, K = x.shape
    q = torch.empty(M, num_heads, head_dim, dtype=x.dtype, device=x.device)
    k_like = q[:, :1].expand(M, num_kv_heads, head_dim)  # a view standing in for k in the checks below
    _check_rotary(positions, q, k_like, cos_sin_cache, head_dim)
    reshape_and_cache(k_like[:0], k_like[:0], key_cache, value_cache, slot_mapping)  # its checks only
    if slot_mapping.shape[0] < M:
        raise KernelInputError(f"slot_mapping needs at least {M} entries")
    if M == 0:
        return q
    block_n = block_n_for(head_dim, plan)
    pdl = use_pdl(x.device)
    grid = ((num_heads + 2 * num_kv_heads) * (head_dim // 2 // block_n),)
    _qkv_rope_cache_kernel[grid](
        x, weight, bias if bias is not None else weight, positions, cos_sin_cache, q, key_cache, value_cache,
        slot_mapping, M, K, x.stride(0), weight.stride(0), cos_sin_cache.stride(0), q.stride(0), q.stride(1),
        *key_cache.stride()[:3], *value_cache.stride()[:3],
        NUM_Q_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, PAGE_SIZE=key_cache.shape[1],
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=plan.block_k, HAS_BIAS=bias is not None,
        EVEN_K=K % plan.block_k == 0, EXACT_FP32=x.dtype == torch.float32, USE_PDL=pdl,
        num_warps=plan.num_warps, num_stages=plan.num_stages, **launch_options(pdl),
    )
    return q
