"""Rotary embedding fused with the KV-cache write: one launch per layer instead of two.

Per token: q is rotated in place (attention reads it next); k is rotated on its way into the paged
cache and v copied beside it, with the contract of ``reshape_and_cache`` (negative slot: nothing
written). The rotation is ``rotary.py``'s, rounding included, so the cache and q hold exactly what
``rotary_embedding`` followed by ``reshape_and_cache`` would leave there. Neox (rotate-half) only,
any even ``rotary_dim`` <= head_dim (dims past it are copied as they are); caches of the
activations' float dtypes or e4m3 (FP8 KV: k and v scaled and clamped on the way in, as
``reshape_and_cache`` writes them).

With ``head_norms`` (Qwen3's and Gemma 3's per-head RMSNorms of q and k, ``HeadNorms``) each head
is normalised on the way in, rounded as the norm kernels round it (norm.py), before it is rotated:
two launches fewer a layer. Full rotary only (every dim of a head is rotated).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from worker.kernels.attention_config import next_power_of_2
from worker.kernels.errors import KernelInputError
from worker.kernels.kv_cache import reshape_and_cache
from worker.kernels.norm import scaled_rms
from worker.kernels.pdl import launch_options, use_pdl
from worker.kernels.rotary import _check_inputs as _check_rotary
from worker.kernels.rotary import _rotated


@dataclass(frozen=True)
class HeadNorms:
    """Per-head RMSNorms of q and k before the rotation: weights [head_dim] in the activations' dtype,
    ``eps``, and ``adds_one`` for Gemma's ``x / rms(x) * (1 + w)`` (computed in float32, cast once)
    in place of ``(x / rms(x)).to(dtype) * w``."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    eps: float
    adds_one: bool = False


@triton.jit
def _rotary_cache_kernel(
    positions_ptr, q_ptr, k_ptr, v_ptr, key_cache_ptr, value_cache_ptr, slot_mapping_ptr, cos_sin_ptr,
    stride_q_tok, stride_q_head, stride_k_tok, stride_k_head, stride_v_tok, stride_v_head,
    stride_kc_block, stride_kc_slot, stride_kc_head, stride_vc_block, stride_vc_slot, stride_vc_head,
    stride_cs_pos, qn_ptr, kn_ptr, eps, k_scale_ptr, v_scale_ptr,
    NUM_Q_HEADS: tl.constexpr, Q_HEADS_P: tl.constexpr, NUM_KV_HEADS: tl.constexpr, KV_HEADS_P: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    USE_PDL: tl.constexpr = False, HEAD_NORM: tl.constexpr = 0, FP8: tl.constexpr = False,
    SCALE_STRIDE: tl.constexpr = 0,
):
    """One program per token. ``HEAD_NORM``: 0 none, 1 RMSNorm of each q and k head (weights at
    qn_ptr and kn_ptr) before the rotation, 2 Gemma's (1 + w) RMSNorm. ``FP8``: an e4m3 cache, k and v
    divided by their per-tensor (SCALE_STRIDE 0) or per-head (1) scales and clamped to e4m3's range
    on the way in, as ``reshape_and_cache`` writes them."""
    if USE_PDL:  # q, k and v come from the kernel before (pdl.py)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs = tl.arange(0, HALF_P)
    cos = tl.load(cos_sin_ptr + pos * stride_cs_pos + offs, mask=offs < HALF, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs_pos + HALF + offs, mask=offs < HALF, other=0.0)
    q_row = q_ptr + token * stride_q_tok
    _rotate_into(q_row, stride_q_head, q_row, stride_q_head, cos, sin, qn_ptr, eps, q_row, NUM_Q_HEADS, Q_HEADS_P,
                 HALF, HALF_P, HEAD_NORM, False, 0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # graph padding: q is rotated (harmless), the cache is left alone
        return
    page = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    k_row = k_ptr + token * stride_k_tok
    k_dst = key_cache_ptr + page * stride_kc_block + offset * stride_kc_slot
    _rotate_into(k_row, stride_k_head, k_dst, stride_kc_head, cos, sin, kn_ptr, eps, k_scale_ptr, NUM_KV_HEADS,
                 KV_HEADS_P, HALF, HALF_P, HEAD_NORM, FP8, SCALE_STRIDE)
    heads = tl.arange(0, KV_HEADS_P)[:, None]
    dims = tl.arange(0, HEAD_DIM_P)[None, :]
    in_rows = (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)
    if 2 * HALF < HEAD_DIM:  # partial rotary: the rest of k goes to the cache as it is
        rest = in_rows & (dims >= 2 * HALF)
        k_rest = tl.load(k_row + heads * stride_k_head + dims, mask=rest)
        tl.store(k_dst + heads * stride_kc_head + dims,
                 _cache_values(k_rest, k_scale_ptr, heads, NUM_KV_HEADS, FP8, SCALE_STRIDE).to(
                     key_cache_ptr.dtype.element_ty), mask=rest)
    v = tl.load(v_ptr + token * stride_v_tok + heads * stride_v_head + dims, mask=in_rows)
    v_dst = value_cache_ptr + page * stride_vc_block + offset * stride_vc_slot + heads * stride_vc_head + dims
    tl.store(v_dst, _cache_values(v, v_scale_ptr, heads, NUM_KV_HEADS, FP8, SCALE_STRIDE).to(
        value_cache_ptr.dtype.element_ty), mask=in_rows)


@triton.jit
def _cache_values(x, scale_ptr, heads, NUM_HEADS: tl.constexpr, FP8: tl.constexpr, SCALE_STRIDE: tl.constexpr):
    """Rows as the cache stores them: as they are, or (FP8) divided by their scale and clamped to
    e4m3's range, as kv_cache.py's write does."""
    if FP8:
        scale = tl.load(scale_ptr + heads * SCALE_STRIDE, mask=heads < NUM_HEADS, other=1.0)
        x = tl.clamp(x.to(tl.float32) / scale, -448.0, 448.0)
    return x


@triton.jit
def _rotate_into(src_ptr, stride_src_head, dst_ptr, stride_dst_head, cos, sin, w_ptr, eps, scale_ptr,
                 NUM_HEADS: tl.constexpr, HEADS_P: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr,
                 HEAD_NORM: tl.constexpr, FP8: tl.constexpr, SCALE_STRIDE: tl.constexpr):
    """The first 2 * HALF dims of each head at ``src_ptr`` neox-rotated into ``dst_ptr`` (which may be
    ``src_ptr``: every load happens before the stores), as ``rotary.py`` rounds the rotation. With
    HEAD_NORM (the rotary then covers the whole head) each head is first normalised over its dims, as
    norm.py's kernels round it: 1, ``(x * rstd).to(dtype) * w`` to dtype; 2, ``x * rstd * (1 + w)`` in
    float32 to dtype; the rotation reads the rounded head, as after the norm's own launch. With FP8
    the rotated head (rounded to the activations' dtype) goes in as ``_cache_values`` writes it."""
    heads = tl.arange(0, HEADS_P)[:, None]
    offs = tl.arange(0, HALF_P)[None, :]
    mask = (heads < NUM_HEADS) & (offs < HALF)
    x1 = tl.load(src_ptr + heads * stride_src_head + offs, mask=mask, other=0.0)
    x2 = tl.load(src_ptr + heads * stride_src_head + HALF + offs, mask=mask, other=0.0)
    dtype = x1.dtype
    n1, n2 = x1.to(tl.float32), x2.to(tl.float32)
    if HEAD_NORM:
        variance = (tl.sum(n1 * n1, axis=1) + tl.sum(n2 * n2, axis=1)) / (2 * HALF)
        rstd = tl.math.rsqrt(variance + eps)[:, None]
        w1 = tl.load(w_ptr + offs, mask=offs < HALF, other=0.0)
        w2 = tl.load(w_ptr + HALF + offs, mask=offs < HALF, other=0.0)
        n1 = scaled_rms(n1, rstd, w1, x1, HEAD_NORM == 2).to(dtype).to(tl.float32)
        n2 = scaled_rms(n2, rstd, w2, x1, HEAD_NORM == 2).to(dtype).to(tl.float32)
    out1, out2 = _rotated(n1, n2, cos, sin, x1)
    out1 = _cache_values(out1.to(dtype), scale_ptr, heads, NUM_HEADS, FP8, SCALE_STRIDE)
    out2 = _cache_values(out2.to(dtype), scale_ptr, heads, NUM_HEADS, FP8, SCALE_STRIDE)
    out_dtype = dst_ptr.dtype.element_ty
    tl.store(dst_ptr + heads * stride_dst_head + offs, out1.to(out_dtype), mask=mask)
    tl.store(dst_ptr + heads * stride_dst_head + HALF + offs, out2.to(out_dtype), mask=mask)


def rotary_and_cache(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int | None = None,
    head_norms: HeadNorms | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Neox-rotate q in place and write rotated k and v at ``slot_mapping`` into the paged cache.

    Shapes and rules are ``rotary_embedding``'s (q [T, Hq, D], k [T, Hkv, D], positions [T]) and
    ``reshape_and_cache``'s (v like k; caches [num_blocks, block_size, Hkv, D] of a float dtype;
    slot_mapping >= T entries, negative = skip). k itself is left as it was: its rotated rows go only
    to the cache. With ``head_norms`` q and k are normalised per head first (q in place; k's normed
    and rotated rows to the cache); the rotary must then cover the whole head. An e4m3 cache
    (float8_e4m3fn) takes ``k_scale`` and ``v_scale`` as ``reshape_and_cache`` does. Returns q.
    """
    rotary_dim = cos_sin_cache.shape[-1] if rotary_dim is None else rotary_dim
    _check_rotary(positions, q, k, cos_sin_cache, rotary_dim)
    fp8 = key_cache.dtype == torch.float8_e4m3fn
    if key_cache.dtype not in (torch.float16, torch.bfloat16, torch.float32) and not fp8:
        raise KernelInputError(f"the fused rotary cache write takes a float or e4m3 cache, got {key_cache.dtype}")
    # the cache checks (shapes, slots, devices, strides, an e4m3 cache's scales) are the plain write's;
    # it is not launched here
    reshape_and_cache(k[:0], v[:0], key_cache, value_cache, slot_mapping, k_scale, v_scale)
    if v.shape != k.shape or slot_mapping.shape[0] < k.shape[0]:
        raise KernelInputError(f"v must match k {tuple(k.shape)} and slot_mapping cover its {k.shape[0]} tokens")
    num_tokens, num_kv_heads, head_dim = k.shape
    if head_norms is not None:
        _check_head_norms(head_norms, q, rotary_dim)
    if num_tokens == 0:
        return q
    half = rotary_dim // 2
    pdl = use_pdl(q.device)
    _rotary_cache_kernel[(num_tokens,)](
        positions, q, k, v, key_cache, value_cache, slot_mapping, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *key_cache.stride()[:3], *value_cache.stride()[:3], cos_sin_cache.stride(0),
        head_norms.q_weight if head_norms is not None else q, head_norms.k_weight if head_norms is not None else q,
        float(head_norms.eps) if head_norms is not None else 0.0,
        k_scale if fp8 else slot_mapping, v_scale if fp8 else slot_mapping,
        NUM_Q_HEADS=q.shape[1], Q_HEADS_P=next_power_of_2(q.shape[1]),
        NUM_KV_HEADS=num_kv_heads, KV_HEADS_P=next_power_of_2(num_kv_heads),
        HEAD_DIM=head_dim, HEAD_DIM_P=next_power_of_2(head_dim), HALF=half, HALF_P=next_power_of_2(half),
        PAGE_SIZE=key_cache.shape[1], USE_PDL=pdl,
        HEAD_NORM=0 if head_norms is None else 2 if head_norms.adds_one else 1,
        FP8=fp8, SCALE_STRIDE=int(fp8 and k_scale.numel() > 1),
        num_warps=4, **launch_options(pdl),
    )
    return q


def _check_head_norms(norms: HeadNorms, q: torch.Tensor, rotary_dim: int) -> None:
    head_dim = q.shape[-1]
    if rotary_dim != head_dim:
        raise KernelInputError(f"head norms ride on a rotary over the whole head ({head_dim} dims), got {rotary_dim}")
    for name, w in (("q", norms.q_weight), ("k", norms.k_weight)):
        if w.shape != (head_dim,) or w.dtype != q.dtype or w.device != q.device or w.stride(0) != 1:
            raise KernelInputError(f"the {name} head norm's weight must be contiguous [{head_dim}] {q.dtype} on "
                                   f"{q.device}, got {tuple(w.shape)} {w.dtype} on {w.device}")
