"""Elementwise building blocks of the model in plain torch, matching Hugging Face numerics.

On CUDA the model swaps in fused Triton kernels with the same contracts (worker/kernels)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("ward.worker.model")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    residual = x + residual
    return rms_norm(residual, weight, eps), residual


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def rms_norm_fp8(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A W8A8 projection's input from the norm before it: (e4m3 codes, per-row scales, residual sum)."""
    from worker.model.quant.linear import quantize_fp8_per_token

    if residual is None:
        normed, residual = rms_norm(x, weight, eps), x
    else:
        normed, residual = fused_add_rms_norm(x, residual, weight, eps)
    return (*quantize_fp8_per_token(normed), residual)


def silu_and_mul_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A W8A8 down projection's input: ``silu_and_mul(x)`` as e4m3 codes with per-row scales."""
    from worker.model.quant.linear import quantize_fp8_per_token

    return quantize_fp8_per_token(silu_and_mul(x))


def build_cos_sin_cache(inv_freq: torch.Tensor, max_position: int, scaling: float) -> torch.Tensor:
    """[max_position, rotary_dim]: cos in the first half, sin in the second (float32)."""
    t = torch.arange(max_position, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq.float())
    return torch.cat([freqs.cos() * scaling, freqs.sin() * scaling], dim=-1)


def build_rope_cache(rope, max_position: int) -> torch.Tensor:
    """The cos/sin table of a ``spec.Rope`` for contexts of up to ``max_position`` tokens. LongRoPE
    takes one set of frequencies for every position, as vLLM does: the long-context set when the
    context may pass the original one (``long_from``), else the short. transformers switches a whole
    sequence to the long set once it passes the original context (recomputing its cache), so a table
    that changed at that position would rotate a long prompt's first part with the wrong set."""
    if rope.long_inv_freq is None:
        return build_cos_sin_cache(rope.inv_freq, max_position, rope.scaling)
    long = max_position > rope.long_from
    log.info("LongRoPE: the %s factors for every position (context %d, original context %d)%s",
             "long" if long else "short", max_position, rope.long_from,
             "; prompts within the original context then differ slightly from the short factors' rotation"
             if long else "")
    return build_cos_sin_cache(rope.long_inv_freq if long else rope.inv_freq, max_position, rope.scaling)


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k weights (float32) and expert ids (int64), each [T, top_k], as transformers routes:
    softmax over all experts in float32, top-k, then optionally divided by their sum."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm: ``x / rms(x) * (1 + weight)`` in float32, cast to x's dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (1.0 + weight.float())).to(x.dtype)


def gemma_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       next_weight: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A Gemma sandwich norm's residual add, ``residual + gemma_rms_norm(x, weight)``, and with
    ``next_weight`` the next block's input normed from it. Returns (that input or None, the sum)."""
    residual = residual + gemma_rms_norm(x, weight, eps)
    return (None if next_weight is None else gemma_rms_norm(residual, next_weight, eps)), residual


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """GeGLU (Gemma): gelu(gate, tanh approximation) * up."""
    d = x.shape[-1] // 2
    return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, rotary_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style (rotate_half) RoPE on q [T, Hq, D] and k [T, Hkv, D]; returns new tensors."""
    cs = cos_sin_cache.index_select(0, positions)
    half = rotary_dim // 2
    cos = torch.cat([cs[:, :half], cs[:, :half]], dim=-1)[:, None, :]
    sin = torch.cat([cs[:, half:], cs[:, half:]], dim=-1)[:, None, :]

    def apply(x: torch.Tensor) -> torch.Tensor:
        xr = x[..., :rotary_dim]
        x1, x2 = xr[..., :half], xr[..., half:]
        rotated = torch.cat((-x2, x1), dim=-1)
        out = xr * cos.to(x.dtype) + rotated * sin.to(x.dtype)
        if rotary_dim == x.shape[-1]:
            return out
        return torch.cat([out, x[..., rotary_dim:]], dim=-1)

    return apply(q), apply(k)


def dequantize_expert(w: torch.Tensor, scale: torch.Tensor | None, block: tuple[int, int] | None,
                      dtype: torch.dtype) -> torch.Tensor:
    """One expert's FP8 weight [N, K] in ``dtype``: per-channel scales [N, 1], or with ``block`` (bn, bk)
    one scale per block [ceil(N / bn), ceil(K / bk)]. A float weight comes back as it is."""
    if scale is None:
        return w
    if block is None:
        return (w.float() * scale.float()).to(dtype)
    bn, bk = block
    n, k = w.shape
    s = scale.float().repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
    return (w.float() * s).to(dtype)


def fused_moe(
    x: torch.Tensor,  # [T, hidden]
    w13: torch.Tensor,  # [E, 2I, hidden]: gate rows, then up rows
    w2: torch.Tensor,  # [E, hidden, I]
    topk_weights: torch.Tensor,  # [T, k] float32
    topk_ids: torch.Tensor,  # [T, k]
    w13_scale: torch.Tensor | None = None,  # FP8 experts: [E, 2I, 1] per channel or [E, 2I/bn, hidden/bk]
    w2_scale: torch.Tensor | None = None,
    block: tuple[int, int] | None = None,  # FP8 block scales' (rows, cols)
) -> torch.Tensor:  # [T, hidden]
    """The reference mixture of SiLU-gated experts: each expert hit runs on its tokens, the outputs
    weighted and summed in float32 (the oracle of the Triton kernel). FP8 experts are de-quantized
    one at a time, only those a token picked."""
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    for expert in torch.unique(topk_ids).tolist():
        token, slot = torch.where(topk_ids == expert)
        gate_up = dequantize_expert(w13[expert], None if w13_scale is None else w13_scale[expert], block, x.dtype)
        down = dequantize_expert(w2[expert], None if w2_scale is None else w2_scale[expert], block, x.dtype)
        h = silu_and_mul(x[token] @ gate_up.t())  # [n, I]
        y = (h @ down.t()).float() * topk_weights[token, slot, None]
        out.index_add_(0, token, y)
    return out.to(x.dtype)
