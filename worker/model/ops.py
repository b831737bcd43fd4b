"""Elementwise building blocks of the model in plain torch, matching Hugging Face numerics.

On CUDA the model swaps in fused Triton kernels with the same contracts (worker/kernels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def build_cos_sin_cache(inv_freq: torch.Tensor, max_position: int, scaling: float) -> torch.Tensor:
    """[max_position, rotary_dim]: cos in the first half, sin in the second (float32)."""
    t = torch.arange(max_position, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq.float())
    return torch.cat([freqs.cos() * scaling, freqs.sin() * scaling], dim=-1)


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
