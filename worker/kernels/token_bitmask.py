"""A grammar's token bitmask applied to the logits in place: one pass over the grammar rows, no
unpacked [G, V] temporaries (the torch path in worker/structured/bitmask.py makes three)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.errors import KernelInputError

BLOCK = 2048


@triton.jit
def _apply_token_bitmask_kernel(logits_ptr, mask_ptr, rows_ptr, stride_logits, stride_mask, VOCAB,
                                BLOCK: tl.constexpr):
    """Grid (G, cdiv(V, BLOCK)): bit t % 32 of word t // 32 of mask row g clear -> logits[rows[g], t] = -inf."""
    g = tl.program_id(0).to(tl.int64)
    row = tl.load(rows_ptr + g).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < VOCAB
    words = tl.load(mask_ptr + g * stride_mask + cols // 32, mask=inside, other=-1)
    forbidden = ((words >> (cols % 32)) & 1) == 0
    tl.store(logits_ptr + row * stride_logits + cols, float("-inf"), mask=inside & forbidden)


def apply_token_bitmask_(logits: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``logits`` [B, V] float32 (in place) at -inf where int32 ``mask`` [G, ceil(V/32)] forbids, in
    ``rows`` [G] (int64 row of each mask row). Returns ``logits``."""
    if logits.dim() != 2 or logits.stride(-1) != 1 or logits.dtype != torch.float32:
        raise KernelInputError(f"logits must be [B, V] float32 with a contiguous last dim, got "
                               f"{tuple(logits.shape)} {logits.dtype}")
    words = (logits.shape[1] + 31) // 32
    if mask.dim() != 2 or mask.dtype != torch.int32 or mask.shape[1] < words or mask.stride(-1) != 1:
        raise KernelInputError(f"mask must be [G, >= {words}] int32, got {tuple(mask.shape)} {mask.dtype}")
    if rows.shape != (mask.shape[0],) or rows.device != logits.device or mask.device != logits.device:
        raise KernelInputError("rows must be [G] on the logits' device, as must the mask")
    if mask.shape[0] == 0 or logits.shape[1] == 0:
        return logits
    grid = (mask.shape[0], triton.cdiv(logits.shape[1], BLOCK))
    _apply_token_bitmask_kernel[grid](logits, mask, rows, logits.stride(0), mask.stride(0), logits.shape[1],
                                      BLOCK=BLOCK, num_warps=4)
    return logits
