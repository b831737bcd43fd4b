"""Rotary position embedding applied in place to q and k."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.attention_config import next_power_of_2
from worker.kernels.errors import KernelInputError


@triton.jit
def _rotated(x1f, x2f, cos, sin, like):
    """(x1 cos - x2 sin, x2 cos + x1 sin) of float32 halves [heads, half], rounded where the torch
    formula (x * cos + rotate_half(x) * sin, in x's dtype: ``like``'s) rounds: cos/sin to x's dtype,
    each product, then the sum. In float32 these casts are no-ops."""
    dtype = like.dtype
    c = cos.to(dtype).to(tl.float32)[None, :]
    s = sin.to(dtype).to(tl.float32)[None, :]
    out1 = (x1f * c).to(dtype).to(tl.float32) - (x2f * s).to(dtype).to(tl.float32)
    out2 = (x2f * c).to(dtype).to(tl.float32) + (x1f * s).to(dtype).to(tl.float32)
    return out1, out2


@triton.jit
def _rotate_heads(
    src_ptr,
    stride_src_head,
    dst_ptr,
    stride_dst_head,
    cos,
    sin,
    NUM_HEADS: tl.constexpr,
    HEADS_P: tl.constexpr,
    HALF: tl.constexpr,
    HALF_P: tl.constexpr,
    IS_NEOX: tl.constexpr,
):
    """Rotate the first 2 * HALF dims of each head at ``src_ptr`` and store them at ``dst_ptr`` (which
    may be ``src_ptr``: every load happens before the stores)."""
    heads = tl.arange(0, HEADS_P)[:, None]
    offs = tl.arange(0, HALF_P)[None, :]
    mask = (heads < NUM_HEADS) & (offs < HALF)
    if IS_NEOX:
        first = offs
        second = offs + HALF
    else:
        first = 2 * offs
        second = 2 * offs + 1
    x1 = tl.load(src_ptr + heads * stride_src_head + first, mask=mask, other=0.0)
    x2 = tl.load(src_ptr + heads * stride_src_head + second, mask=mask, other=0.0)
    dtype = x1.dtype
    out1, out2 = _rotated(x1.to(tl.float32), x2.to(tl.float32), cos, sin, x1)
    out_dtype = dst_ptr.dtype.element_ty
    tl.store(dst_ptr + heads * stride_dst_head + first, out1.to(dtype).to(out_dtype), mask=mask)
    tl.store(dst_ptr + heads * stride_dst_head + second, out2.to(dtype).to(out_dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    positions_ptr,
    q_ptr,
    k_ptr,
    cos_sin_ptr,
    stride_q_tok,
    stride_q_head,
    stride_k_tok,
    stride_k_head,
    stride_cs_pos,
    NUM_Q_HEADS: tl.constexpr,
    Q_HEADS_P: tl.constexpr,
    NUM_K_HEADS: tl.constexpr,
    K_HEADS_P: tl.constexpr,
    HALF: tl.constexpr,
    HALF_P: tl.constexpr,
    IS_NEOX: tl.constexpr,
):
    """One program per token: rotate the first 2 * HALF dims of every q and k head at its position."""
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs = tl.arange(0, HALF_P)
    cos = tl.load(cos_sin_ptr + pos * stride_cs_pos + offs, mask=offs < HALF, other=0.0)
    sin = tl.load(cos_sin_ptr + pos * stride_cs_pos + HALF + offs, mask=offs < HALF, other=0.0)
    q_row = q_ptr + token * stride_q_tok
    k_row = k_ptr + token * stride_k_tok
    _rotate_heads(q_row, stride_q_head, q_row, stride_q_head, cos, sin, NUM_Q_HEADS, Q_HEADS_P, HALF, HALF_P, IS_NEOX)
    _rotate_heads(k_row, stride_k_head, k_row, stride_k_head, cos, sin, NUM_K_HEADS, K_HEADS_P, HALF, HALF_P, IS_NEOX)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    rotary_dim: int | None = None,
    is_neox: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k in place by their tokens' positions; returns ``(q, k)`` (the same tensors).

    positions: [T] int32/int64, each < cos_sin_cache.shape[0] (not checked on the device)
    q: [T, Hq, D], k: [T, Hkv, D], same float dtype, last dim contiguous (views into a fused qkv are fine)
    cos_sin_cache: [max_position, rotary_dim], cos in the first half and sin in the second (float32)
    rotary_dim: even, <= D (default: the cache width); dims past it are left as they are.
    is_neox: rotate halves (x[i], x[i + rotary_dim/2]) as Hugging Face Llama's ``rotate_half``;
      otherwise rotate interleaved pairs (x[2i], x[2i+1]) as GPT-J.
    Rounding follows ``x * cos + rotate(x) * sin`` computed in x's dtype with cos/sin cast to it.
    """
    rotary_dim = cos_sin_cache.shape[-1] if rotary_dim is None else rotary_dim
    _check_inputs(positions, q, k, cos_sin_cache, rotary_dim)
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return q, k
    half = rotary_dim // 2
    _rotary_kernel[(num_tokens,)](
        positions,
        q,
        k,
        cos_sin_cache,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos_sin_cache.stride(0),
        NUM_Q_HEADS=q.shape[1],
        Q_HEADS_P=next_power_of_2(q.shape[1]),
        NUM_K_HEADS=k.shape[1],
        K_HEADS_P=next_power_of_2(k.shape[1]),
        HALF=half,
        HALF_P=next_power_of_2(half),
        IS_NEOX=is_neox,
        num_warps=4,
    )
    return q, k


def _check_inputs(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, rotary_dim: int
) -> None:
    if q.dim() != 3 or k.dim() != 3 or k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise KernelInputError(f"q must be [T, Hq, D] and k [T, Hkv, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.dtype != k.dtype:
        raise KernelInputError(f"q and k dtypes differ: {q.dtype} vs {k.dtype}")
    if positions.dim() != 1 or positions.shape[0] != q.shape[0] or positions.dtype not in (torch.int32, torch.int64):
        raise KernelInputError(
            f"positions must be int32/int64 [{q.shape[0]}], got {positions.dtype} {tuple(positions.shape)}"
        )
    if rotary_dim % 2 or not 2 <= rotary_dim <= q.shape[2]:
        raise KernelInputError(f"rotary_dim must be even and in [2, {q.shape[2]}], got {rotary_dim}")
    if cos_sin_cache.dim() != 2 or cos_sin_cache.shape[1] != rotary_dim or cos_sin_cache.stride(1) != 1:
        raise KernelInputError(f"cos_sin_cache must be [max_position, {rotary_dim}] with contiguous rows")
    for name, tensor in (("q", q), ("k", k)):
        if tensor.stride(-1) != 1:
            raise KernelInputError(f"{name} must have a contiguous last dimension")
    for name, tensor in (("positions", positions), ("k", k), ("cos_sin_cache", cos_sin_cache)):
        if tensor.device != q.device:
            raise KernelInputError(f"{name} is on {tensor.device}, q on {q.device}")
    if positions.stride(0) != 1:
        raise KernelInputError("positions must be contiguous")
