"""Sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE): a softmax router picks the top-k experts
per token (``ops.select_experts``: torch on the CPU, one Triton launch on CUDA); the experts run
through ``ops.fused_moe`` (a loop over experts in torch on the CPU, a
grouped GEMM over expert-sorted tokens in Triton on CUDA).

Expert weights are stacked so one kernel sees them all: ``w13`` [E, 2 * I, hidden] holds each
expert's gate rows then its up rows; ``w2`` [E, hidden, I] its down projection. The loader fills
them from the checkpoint's per-expert tensors.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from worker.model.spec import MoeSpec


class SparseMoe(nn.Module):
    def __init__(self, hidden_size: int, moe: MoeSpec, ops: ModuleType):
        super().__init__()
        self.moe = moe
        self.gate = nn.Linear(hidden_size, moe.num_experts, bias=False)
        self.w13 = nn.Parameter(torch.empty(moe.num_experts, 2 * moe.intermediate_size, hidden_size))
        self.w2 = nn.Parameter(torch.empty(moe.num_experts, hidden_size, moe.intermediate_size))
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [T, hidden]
        weights, ids = self.ops.select_experts(self.gate(x), self.moe.top_k, self.moe.renormalize)
        return self.ops.fused_moe(x, self.w13, self.w2, weights, ids)
