"""Rotary embedding fused with the KV-cache write: one launch per layer instead of two.

Per token: q is rotated in place (attention reads it next); k is rotated on its way into the paged
cache and v copied beside it, with the contract of ``reshape_and_cache`` (negative slot: nothing
written). The rotation is ``rotary.py``'s, rounding included, so the cache and q hold exactly what
``rotary_embedding`` followed by ``reshape_and_cache`` would leave there. Neox (rotate-half) only,
any even ``rotary_dim`` <= head_dim (dims past it are copied as they are); caches of the
activations' float dtypes (an FP8 cache keeps the two-kernel path).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.attention_config import next_power_of_2
from worker.kernels.errors import KernelInputError
from worker.kernels.kv_cache import reshape_and_cache
from worker.kernels.pdl import launch_options, use_pdl
from worker.kernels.rotary import _check_inputs as _check_rotary
from worker.kernels.rotary import _rotate_heads


@triton.jit
def _rotary_cache_kernel(
    positions_ptr, q_ptr, k_ptr, v_ptr, key_cache_ptr, value_cache_ptr, slot_mapping_ptr, cos_sin_ptr,
    stride_q_tok, stride_q_head, stride_k_tok, stride_k_head, stride_v_tok, stride_v_head,
    stride_kc_block, stride_kc_slot, stride_kc_head, stride_vc_block, stride_vc_slot, stride_vc_head,
    stride_cs_pos,
    NUM_Q_HEADS: tl.constexpr, Q_HEADS_P: tl.constexpr, NUM_KV_HEADS: tl.constexpr, KV_HEADS_P: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_P: tl.constexpr, HALF: tl.constexpr, HALF_P: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """One program per token."""
    if USE_PDL:  # q, k and v come from the kernel before (pdl.py)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs = tl.arange(0, HALF_P)
    cos = tl.load(cos_sin_ptr + pos * stride_cs_pos + offs, mask=offs < HALF, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs_pos + HALF + offs, mask=offs < HALF, other=0.0)
    q_row = q_ptr + token * stride_q_tok
    _rotate_heads(q_row, stride_q_head, q_row, stride_q_head, cos, sin, NUM_Q_HEADS, Q_HEADS_P, HALF, HALF_P, True)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:  # graph padding: q is rotated (harmless), the cache is left alone
        return
    page = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    k_row = k_ptr + token * stride_k_tok
    k_dst = key_cache_ptr + page * stride_kc_block + offset * stride_kc_slot
    _rotate_heads(k_row, stride_k_head, k_dst, stride_kc_head, cos, sin, NUM_KV_HEADS, KV_HEADS_P, HALF, HALF_P, True)
    heads = tl.arange(0, KV_HEADS_P)[:, None]
    dims = tl.arange(0, HEAD_DIM_P)[None, :]
    in_rows = (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)
    if 2 * HALF < HEAD_DIM:  # partial rotary: the rest of k goes to the cache as it is
        rest = in_rows & (dims >= 2 * HALF)
        k_rest = tl.load(k_row + heads * stride_k_head + dims, mask=rest)
        tl.store(k_dst + heads * stride_kc_head + dims, k_rest.to(key_cache_ptr.dtype.element_ty), mask=rest)
    v = tl.load(v_ptr + token * stride_v_tok + heads * stride_v_head + dims, mask=in_rows)
    v_dst = value_cache_ptr + page * stride_vc_block + offset * stride_vc_slot + heads * stride_vc_head + dims
    tl.store(v_dst, v.to(value_cache_ptr.dtype.element_ty), mask=in_rows)


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
) -> torch.Tensor:
    """Neox-rotate q in place and write rotated k and v at ``slot_mapping`` into the paged cache.

    Shapes and rules are ``rotary_embedding``'s (q [T, Hq, D], k [T, Hkv, D], positions [T]) and
    ``reshape_and_cache``'s (v like k; caches [num_blocks, block_size, Hkv, D] of a float dtype;
    slot_mapping >= T entries, negative = skip). k itself is left as it was: its rotated rows go only
    to the cache. Returns q.
    """
    rotary_dim = cos_sin_cache.shape[-1] if rotary_dim is None else rotary_dim
    _check_rotary(positions, q, k, cos_sin_cache, rotary_dim)
    if key_cache.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise KernelInputError(f"the fused rotary cache write takes a float cache, got {key_cache.dtype}")
    # the cache checks (shapes, slots, devices, strides) are the plain write's; it is not launched here
    reshape_and_cache(k[:0], v[:0], key_cache, value_cache, slot_mapping)
    if v.shape != k.shape or slot_mapping.shape[0] < k.shape[0]:
        raise KernelInputError(f"v must match k {tuple(k.shape)} and slot_mapping cover its {k.shape[0]} tokens")
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return q
    half = rotary_dim // 2
    pdl = use_pdl(q.device)
    _rotary_cache_kernel[(num_tokens,)](
        positions, q, k, v, key_cache, value_cache, slot_mapping, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *key_cache.stride()[:3], *value_cache.stride()[:3], cos_sin_cache.stride(0),
        NUM_Q_HEADS=q.shape[1], Q_HEADS_P=next_power_of_2(q.shape[1]),
        NUM_KV_HEADS=num_kv_heads, KV_HEADS_P=next_power_of_2(num_kv_heads),
        HEAD_DIM=head_dim, HEAD_DIM_P=next_power_of_2(head_dim), HALF=half, HALF_P=next_power_of_2(half),
        PAGE_SIZE=key_cache.shape[1], USE_PDL=pdl,
        num_warps=4, **launch_options(pdl),
    )
    return q
