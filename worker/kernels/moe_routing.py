"""MoE routing in one launch: the softmax over a token's router logits, its top-k experts, and their
weights (renormalised to sum to one where the family asks), as ``worker.model.ops.select_experts``
computes them in torch with four to five kernels (a cast, the softmax, the top-k, a sum, a divide).

One program per token holds its whole logit row (every family has at most a few hundred experts),
takes the softmax in float32 and picks the k largest by k passes of a max (ties to the lower expert
index), so at decode sizes the router costs one launch a layer instead of five.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.attention_config import next_power_of_2
from worker.kernels.errors import KernelInputError

MAX_EXPERTS = 1024  # a row of logits held in registers


@triton.jit
def _route_kernel(logits_ptr, weights_ptr, ids_ptr, stride_l, E: tl.constexpr, E_P: tl.constexpr,
                  TOP_K: tl.constexpr, K_P: tl.constexpr, RENORMALIZE: tl.constexpr):
    """Grid (T,): row t's softmax, its TOP_K largest probabilities and their experts."""
    row = tl.program_id(0).to(tl.int64)
    experts = tl.arange(0, E_P)
    logits = tl.load(logits_ptr + row * stride_l + experts, mask=experts < E, other=float("-inf")).to(tl.float32)
    shifted = logits - tl.max(logits, axis=0)
    numer = tl.exp(shifted)
    probs = numer / tl.sum(numer, axis=0)
    slots = tl.arange(0, K_P)
    picked_p = tl.zeros([K_P], dtype=tl.float32)
    picked_e = tl.zeros([K_P], dtype=tl.int64)
    left = tl.where(experts < E, probs, -1.0)  # padding experts are never picked
    for k in tl.static_range(TOP_K):
        best = tl.max(left, axis=0)
        expert = tl.min(tl.where(left == best, experts, E_P), axis=0)  # the lower index on a tie
        picked_p = tl.where(slots == k, best, picked_p)
        picked_e = tl.where(slots == k, expert.to(tl.int64), picked_e)
        left = tl.where(experts == expert, -1.0, left)
    if RENORMALIZE:
        picked_p = picked_p / tl.sum(tl.where(slots < TOP_K, picked_p, 0.0), axis=0)
    tl.store(weights_ptr + row * TOP_K + slots, picked_p, mask=slots < TOP_K)
    tl.store(ids_ptr + row * TOP_K + slots, picked_e, mask=slots < TOP_K)


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k weights (float32) and expert ids (int64), each [T, top_k], of router logits [T, E]:
    ``worker.model.ops.select_experts``'s contract (the same experts, weights to float32 rounding;
    equal probabilities go to the lower expert index)."""
    if router_logits.dim() != 2 or router_logits.stride(-1) != 1:
        raise KernelInputError(f"router logits must be [T, E] with a contiguous last dim, got {tuple(router_logits.shape)}")
    tokens, experts = router_logits.shape
    if not 1 <= top_k <= experts or experts > MAX_EXPERTS:
        raise KernelInputError(f"top_k {top_k} of {experts} experts (at most {MAX_EXPERTS}) cannot be routed")
    weights = torch.empty(tokens, top_k, dtype=torch.float32, device=router_logits.device)
    ids = torch.empty(tokens, top_k, dtype=torch.int64, device=router_logits.device)
    if tokens:
        _route_kernel[(tokens,)](router_logits, weights, ids, router_logits.stride(0), E=experts,
                                 E_P=next_power_of_2(experts), TOP_K=top_k, K_P=next_power_of_2(top_k),
                                 RENORMALIZE=renormalize, num_warps=1 if experts <= 128 else 4)
    return weights, ids
