"""The expert grouping behind the fused MoE kernel (``worker/kernels/moe_align.py``, plain torch):
every routed (token, expert) pair lands in exactly one row, every block of rows belongs to one
expert, and the sizes never depend on the routing (what makes the step graph-capturable)."""
from __future__ import annotations

import pytest
import torch

from worker.kernels.moe_align import moe_align, padded_rows


def _routing(seed: int, tokens: int, experts: int, top_k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)])


@pytest.mark.parametrize(("tokens", "experts", "top_k", "block_m", "seed"), [
    (1, 8, 2, 16, 0), (37, 8, 2, 16, 1), (100, 128, 8, 16, 2), (300, 4, 3, 64, 3), (5, 3, 3, 4, 4),
])
def test_every_pair_once_and_blocks_hold_one_expert(tokens, experts, top_k, block_m, seed):
    ids = _routing(seed, tokens, experts, top_k)
    sorted_ids, block_experts, num_rows = moe_align(ids, experts, block_m)
    n = tokens * top_k
    assert sorted_ids.shape[0] == padded_rows(n, experts, block_m) and sorted_ids.shape[0] % block_m == 0
    real = sorted_ids[sorted_ids < n].tolist()
    assert sorted(real) == list(range(n))  # each pair exactly once
    flat = ids.reshape(-1)
    counts = torch.bincount(flat, minlength=experts)
    assert int(num_rows) == int(((counts + block_m - 1) // block_m * block_m).sum())
    assert bool((sorted_ids[int(num_rows):] == n).all())  # nothing past the used rows
    for b in range(int(num_rows) // block_m):
        rows = sorted_ids[b * block_m : (b + 1) * block_m]
        rows = rows[rows < n].long()
        assert rows.numel() > 0, f"block {b} is empty inside the used rows"
        assert bool((flat[rows] == block_experts[b]).all()), f"block {b} mixes experts"


def test_all_tokens_on_one_expert():
    ids = torch.full((50, 1), 2)
    sorted_ids, block_experts, num_rows = moe_align(ids, 4, 16)
    assert int(num_rows) == 64 and block_experts[:4].tolist() == [2, 2, 2, 2]
    assert sorted_ids[:50].tolist() == list(range(50))
