"""FP8 KV cache (``kv_cache_dtype="fp8"``): e4m3 K and V with float32 scales per layer, one per
tensor or one per KV head.

Scales come from the checkpoint where it ships them (``self_attn.k_scale`` / ``v_scale``, or under
``k_proj`` / ``v_proj``, as llm-compressor and FP8 exporters write them: a scalar or one per KV
head), else 1.0, which suits K and V of ordinary magnitude (e4m3 spans +-448). Each layer's
attention implementation holds its pair; the attention backends write ``x / scale`` in e4m3 and
read ``q * scale``.
"""
from __future__ import annotations

import torch

from worker.errors import ModelLoadError

KV_FP8 = torch.float8_e4m3fn


def kv_cache_torch_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    return KV_FP8 if kv_cache_dtype == "fp8" else model_dtype


def fp8_kv_backend(requested: str, kv_dtype: torch.dtype, device: torch.device) -> str:
    """The attention backend for the KV dtype: an FP8 cache is read by the Triton kernels (torch on
    the CPU); flash-attn and FlashInfer are not wired to its scales."""
    if kv_dtype != KV_FP8:
        return requested
    if requested in ("flash_attn", "flashinfer"):
        raise ModelLoadError(f"kv_cache_dtype='fp8' is not supported with attention_backend={requested!r} "
                             "(use triton, torch or auto)")
    return "triton" if requested == "auto" and device.type == "cuda" else requested


def attach_kv_scales(model, spec) -> None:
    """Gives each layer's attention a (k_scale, v_scale) pair of ones, registered as buffers of its
    ``self_attn`` module so a checkpoint's scales land there when it ships them."""
    for layer in model.layers:
        attn = layer.self_attn
        device = next(attn.parameters()).device
        for name in ("k_scale", "v_scale"):
            attn.register_buffer(name, torch.ones(1, dtype=torch.float32, device=device))
        _bind(attn)


def _bind(attn) -> None:
    attn.attn.k_scale, attn.attn.v_scale = attn.k_scale, attn.v_scale


def kv_scale_target(layer, kind: str, name: str):
    """Where a checkpoint's ``k_scale`` / ``v_scale`` goes: (buffer, placer), or None when the KV
    cache is not FP8 (the scale is then not needed)."""
    attn = layer.self_attn
    if not hasattr(attn, kind):
        return None
    heads = attn.num_kv_heads

    def place(t: torch.Tensor):
        t = t.float().reshape(-1)
        if t.numel() not in (1, heads):
            raise ModelLoadError(f"{name}: {t.numel()} values, expected 1 or one per KV head ({heads})")
        if bool((t <= 0).any()) or not bool(torch.isfinite(t).all()):
            raise ModelLoadError(f"{name}: scales must be positive and finite")
        if t.numel() != getattr(attn, kind).numel():
            attn.register_buffer(kind, torch.empty(t.numel(), dtype=torch.float32, device=getattr(attn, kind).device))
            _bind(attn)
        return getattr(attn, kind), t

    return getattr(attn, kind), place
