"""Groups a step's (token, expert) pairs by expert for the fused MoE kernel, in torch, on the device.

Each of the T * top_k routed pairs is a row of the grouped GEMM. Rows are sorted by expert and each
expert's rows are padded to a multiple of ``block_m``, so every block of ``block_m`` sorted rows
belongs to one expert and the kernel loads that expert's weights once per block. Sizes depend only
on T, top_k, the expert count and ``block_m`` (never on the routing), and nothing is read back to
the host, so the step stays capturable in a CUDA graph.

Plain torch: importable and testable without Triton; on CUDA, steps of up to 4,096 pairs take its
one-launch twin (``moe_align_kernel.align``), whose results are the same.
"""
from __future__ import annotations

import torch


def padded_rows(num_pairs: int, num_experts: int, block_m: int) -> int:
    """An upper bound of the sorted, padded rows: every expert may waste block_m - 1 of them."""
    bound = num_pairs + num_experts * (block_m - 1)
    return -(-bound // block_m) * block_m


def moe_align(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_ids [P] int32, block_experts [P // block_m] int32, num_rows [1] int32).

    ``sorted_ids`` holds pair indices (token * top_k + slot) grouped by expert, each group padded
    with the sentinel T * top_k; ``block_experts[b]`` is the expert of rows b * block_m ...;
    ``num_rows`` is the padded row count actually used (blocks from there on are empty).
    """
    flat = topk_ids.reshape(-1).long()
    n, device = flat.numel(), flat.device
    counts = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would size its output on the host
    padded = (counts + block_m - 1) // block_m * block_m
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    first = torch.cumsum(counts, 0) - counts  # where each expert's pairs begin in ``order``
    dest = starts[sorted_experts] + torch.arange(n, device=device) - first[sorted_experts]
    total = padded_rows(n, num_experts, block_m)
    sorted_ids = torch.full((total,), n, dtype=torch.int32, device=device)
    sorted_ids[dest] = order.to(torch.int32)
    block_starts = torch.arange(0, total, block_m, device=device)
    block_experts = torch.searchsorted(ends, block_starts, right=True).clamp_(max=num_experts - 1)
    return sorted_ids, block_experts.to(torch.int32), ends[-1:].to(torch.int32)
