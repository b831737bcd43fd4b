"""The model's ops (same contracts as worker/model/ops.py) backed by the Triton kernels.

``WARD_GEMMA_KERNELS=0`` gives Gemma's norms and GeGLU their torch expressions instead (for A/B on a
card: those kernels were built without one), and ``WARD_MOE_ROUTING_KERNEL=0`` the MoE router's."""
from __future__ import annotations

import os

import torch

from worker.kernels import activation, norm
from worker.kernels.activation import silu_and_mul, silu_and_mul_fp8
from worker.kernels.moe_gemm import fused_moe
from worker.kernels.moe_routing import select_experts as _route
# the norms read q/k norms' per-head views of the fused qkv output in place
from worker.kernels.norm import fused_add_rms_norm, rms_norm, rms_norm_fp8
from worker.kernels.rotary import rotary_embedding as _rotary
from worker.model import ops as torch_ops
from worker.model.ops import build_cos_sin_cache, build_rope_cache

if os.environ.get("WARD_GEMMA_KERNELS", "1").strip() != "0":
    gemma_rms_norm, gemma_add_rms_norm = norm.gemma_rms_norm, norm.gemma_add_rms_norm
    gelu_tanh_and_mul = activation.gelu_tanh_and_mul
else:  # the torch expressions, for an A/B against the kernels
    gemma_rms_norm, gemma_add_rms_norm = torch_ops.gemma_rms_norm, torch_ops.gemma_add_rms_norm
    gelu_tanh_and_mul = torch_ops.gelu_tanh_and_mul

# the router in one launch (softmax, top-k, renormalisation) instead of the torch ops' four or five
select_experts = _route if os.environ.get("WARD_MOE_ROUTING_KERNEL", "1").strip() != "0" else torch_ops.select_experts

__all__ = ["rms_norm", "fused_add_rms_norm", "rms_norm_fp8", "gemma_rms_norm", "gemma_add_rms_norm", "silu_and_mul",
           "silu_and_mul_fp8", "rotary_embedding", "build_cos_sin_cache", "build_rope_cache", "gelu_tanh_and_mul",
           "fused_moe", "select_experts"]


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
                     rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _rotary(positions, q, k, cos_sin_cache, rotary_dim=rotary_dim, is_neox=True)
