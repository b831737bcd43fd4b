"""``moe_align`` in one Triton launch, for the small steps of decode.

The torch grouping (``moe_align.py``) costs some twenty small kernels a MoE layer (a scatter-add, two
cumulative sums, an argsort, gathers, a search), which at decode sizes take longer than the layer's
expert GEMMs wait for: a 32-layer Mixtral decode step would spend hundreds of launches on it. One
program does the same here, in the same order: the per-expert counts, their padded ends, each block's
expert, then every pair placed at its expert's start plus its rank among that expert's pairs (ranks
in pair order, as the stable argsort gives them), after the padding sentinel is written everywhere.
The results are equal to ``moe_align``'s, element for element.

One program walks all the pairs, a one-hot row of the expert count each, so past ``MAX_PAIRS`` pairs
or ``MAX_ONE_HOT`` one-hot elements (larger steps, where the expert GEMMs dwarf the torch launches)
``align`` hands the step to the torch version.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from worker.kernels.attention_config import next_power_of_2
from worker.kernels.moe_align import moe_align, padded_rows

# above: the torch grouping (one program would walk them all); WARD_MOE_ALIGN_KERNEL=0: always (A/B timing)
MAX_PAIRS = 4096 if os.environ.get("WARD_MOE_ALIGN_KERNEL", "1") != "0" else 0
# ... and no more pairs than make this many one-hot elements in all (a pair costs a row of E of them):
# 4,096 pairs of Mixtral's 8 experts, 1,024 of Qwen3-MoE's 128 (128 decoding sequences at top 8)
MAX_ONE_HOT = 1 << 17
ELEMENTS = 8192  # a chunk's one-hot [CHUNK, experts] tile held at once


@triton.jit
def _moe_align_kernel(ids_ptr, sorted_ptr, block_experts_ptr, num_rows_ptr, n, total, num_blocks,
                      E: tl.constexpr, E_P: tl.constexpr, BLOCK_M: tl.constexpr, CHUNK: tl.constexpr):
    """Grid (1,). ``ids_ptr``: the n routed experts in pair order (token * top_k + slot)."""
    experts = tl.arange(0, E_P)
    counts = tl.zeros([E_P], dtype=tl.int32)
    for start in range(0, n, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        e = tl.load(ids_ptr + offs, mask=offs < n, other=E_P).to(tl.int32)  # E_P: no expert's
        counts += tl.sum((e[:, None] == experts[None, :]).to(tl.int32), axis=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    tl.store(num_rows_ptr, tl.sum(padded, axis=0))
    for b0 in range(0, num_blocks, CHUNK):  # a block's expert: how many experts end at or before it
        blocks = b0 + tl.arange(0, CHUNK)
        ended = (ends[None, :] <= (blocks * BLOCK_M)[:, None]) & (experts[None, :] < E)
        expert = tl.minimum(tl.sum(ended.to(tl.int32), axis=1), E - 1)
        tl.store(block_experts_ptr + blocks, expert, mask=blocks < num_blocks)
    for s0 in range(0, total, CHUNK):
        offs = s0 + tl.arange(0, CHUNK)
        tl.store(sorted_ptr + offs, tl.zeros([CHUNK], dtype=tl.int32) + n, mask=offs < total)
    tl.debug_barrier()  # every sentinel is written before any pair lands on its slot
    seen = tl.zeros([E_P], dtype=tl.int32)  # pairs of each expert in the chunks before
    for start in range(0, n, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        ok = offs < n
        e = tl.load(ids_ptr + offs, mask=ok, other=E_P).to(tl.int32)
        hit = (e[:, None] == experts[None, :]).to(tl.int32)
        slot = starts[None, :] + seen[None, :] + tl.cumsum(hit, axis=0) - 1
        dest = tl.sum(tl.where(hit > 0, slot, 0), axis=1)
        tl.store(sorted_ptr + dest, offs.to(tl.int32), mask=ok)
        seen += tl.sum(hit, axis=0)


def align(topk_ids: torch.Tensor, num_experts: int, block_m: int,
          max_pairs: int | None = None, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``moe_align``'s result (see there), in one launch for at most ``max_pairs`` pairs (default:
    ``MAX_PAIRS``, fewer with many experts); ``chunk`` overrides the pairs a step of the program
    takes (tests)."""
    flat = topk_ids.reshape(-1)
    n = flat.numel()
    experts_p = next_power_of_2(num_experts)
    if max_pairs is None:
        max_pairs = min(MAX_PAIRS, MAX_ONE_HOT // experts_p)
    if n > max_pairs or n == 0:
        return moe_align(topk_ids, num_experts, block_m)
    flat = flat.contiguous()
    total = padded_rows(n, num_experts, block_m)
    device = flat.device
    sorted_ids = torch.empty(total, dtype=torch.int32, device=device)
    block_experts = torch.empty(total // block_m, dtype=torch.int32, device=device)
    num_rows = torch.empty(1, dtype=torch.int32, device=device)
    chunk = chunk or max(16, min(1024, ELEMENTS // experts_p))
    _moe_align_kernel[(1,)](flat, sorted_ids, block_experts, num_rows, n, total, total // block_m,
                            E=num_experts, E_P=experts_p, BLOCK_M=block_m, CHUNK=chunk, num_warps=4)
    return sorted_ids, block_experts, num_rows
