"""Write a step's K/V rows into the paged cache."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.attention_config import next_power_of_2
from worker.kernels.errors import KernelInputError


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr,
    value_ptr,
    key_cache_ptr,
    value_cache_ptr,
    slot_mapping_ptr,
    k_scale_ptr,
    v_scale_ptr,
    stride_k_tok,
    stride_k_head,
    stride_v_tok,
    stride_v_head,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEADS_P: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    FP8: tl.constexpr = False,
    SCALE_STRIDE: tl.constexpr = 0,
):
    """One program per token: copy its [Hkv, D] K and V rows to their slot; a negative slot is skipped.
    FP8: the rows are divided by their per-tensor (SCALE_STRIDE 0) or per-head (1) scales first."""
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    page = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    heads = tl.arange(0, HEADS_P)[:, None]
    dims = tl.arange(0, HEAD_DIM_P)[None, :]
    mask = (heads < NUM_KV_HEADS) & (dims < HEAD_DIM)
    k = tl.load(key_ptr + token * stride_k_tok + heads * stride_k_head + dims, mask=mask)
    v = tl.load(value_ptr + token * stride_v_tok + heads * stride_v_head + dims, mask=mask)
    if FP8:
        head_ok = heads < NUM_KV_HEADS
        ks = tl.load(k_scale_ptr + heads * SCALE_STRIDE, mask=head_ok, other=1.0)
        vs = tl.load(v_scale_ptr + heads * SCALE_STRIDE, mask=head_ok, other=1.0)
        k = tl.clamp(k.to(tl.float32) / ks, -448.0, 448.0)
        v = tl.clamp(v.to(tl.float32) / vs, -448.0, 448.0)
    k_dst = key_cache_ptr + page * stride_kc_block + offset * stride_kc_slot + heads * stride_kc_head + dims
    v_dst = value_cache_ptr + page * stride_vc_block + offset * stride_vc_slot + heads * stride_vc_head + dims
    tl.store(k_dst, k.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_dst, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Scatter this step's K/V into the paged cache, in place.

    An e4m3 cache (float8_e4m3fn) needs float32 ``k_scale`` / ``v_scale`` of [1] or [Hkv]: it stores
    ``k / k_scale`` (clamped to the e4m3 range).

    key, value:  [T, Hkv, D] (any float dtype; converted to the cache dtype), last dim contiguous
    key_cache, value_cache: [num_blocks, block_size, Hkv, D], last dim contiguous
    slot_mapping: int32/int64 [>= T]; token t goes to flat slot ``slot_mapping[t]``
      (= block * block_size + offset); a negative slot (padding) writes nothing.
    Slots are not bounds-checked on the device: they must be < num_blocks * block_size.
    """
    if key.dim() != 3 or value.shape != key.shape:
        raise KernelInputError(f"key/value must both be [T, Hkv, D], got {tuple(key.shape)} and {tuple(value.shape)}")
    if key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
        raise KernelInputError(f"caches must both be [num_blocks, block_size, Hkv, D], got {tuple(key_cache.shape)}")
    if key_cache.shape[2:] != key.shape[1:]:
        raise KernelInputError(f"cache rows {tuple(key_cache.shape[2:])} differ from key rows {tuple(key.shape[1:])}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] < key.shape[0]:
        raise KernelInputError(f"slot_mapping needs at least T = {key.shape[0]} entries")
    if slot_mapping.stride(0) != 1:
        raise KernelInputError("slot_mapping must be contiguous")
    if slot_mapping.dtype not in (torch.int32, torch.int64):
        raise KernelInputError(f"slot_mapping must be int32 or int64, got {slot_mapping.dtype}")
    for name, tensor in (("key", key), ("value", value), ("key_cache", key_cache), ("value_cache", value_cache)):
        if tensor.stride(-1) != 1:
            raise KernelInputError(f"{name} must have a contiguous last dimension")
        if tensor.device != key.device:
            raise KernelInputError(f"{name} is on {tensor.device}, key on {key.device}")
    if slot_mapping.device != key.device:
        raise KernelInputError(f"slot_mapping is on {slot_mapping.device}, key on {key.device}")
    num_tokens, num_kv_heads, head_dim = key.shape
    fp8 = key_cache.dtype == torch.float8_e4m3fn
    if fp8 and (k_scale is None or v_scale is None or k_scale.numel() not in (1, num_kv_heads)
                or v_scale.numel() != k_scale.numel()):
        raise KernelInputError(f"an fp8 cache needs k_scale and v_scale of 1 or {num_kv_heads} values")
    if num_tokens == 0:
        return
    _reshape_and_cache_kernel[(num_tokens,)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        k_scale if fp8 else slot_mapping,
        v_scale if fp8 else slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        *key_cache.stride()[:3],
        *value_cache.stride()[:3],
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        HEADS_P=next_power_of_2(num_kv_heads),
        HEAD_DIM_P=next_power_of_2(head_dim),
        PAGE_SIZE=key_cache.shape[1],
        FP8=fp8,
        SCALE_STRIDE=int(fp8 and k_scale.numel() > 1),
        num_warps=4 if num_kv_heads * head_dim >= 2048 else 2,
    )
