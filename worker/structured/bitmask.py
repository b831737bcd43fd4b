"""The per-step token bitmask: filled on the host from the matchers, applied to the logits on the device.

Bit ``t % 32`` of word ``t // 32`` of a row is set when token ``t`` is allowed (llguidance's layout).
"""
from __future__ import annotations

from typing import Any

import torch

_executor: Any = None


def _parallel_executor() -> Any:
    global _executor
    if _executor is None:
        import llguidance

        _executor = llguidance.LLExecutor()
    return _executor


def fill_bitmask(matchers: list[tuple[int, Any]], num_rows: int, vocab_size: int) -> torch.Tensor:
    """An int32 ``[num_rows, ceil(V/32)]`` mask: rows without a matcher allow everything."""
    words = (vocab_size + 31) // 32
    mask = torch.full((num_rows, words), -1, dtype=torch.int32)
    if len(matchers) == 1:
        row, matcher = matchers[0]
        view = mask[row]
        matcher.unsafe_compute_mask_ptr(view.data_ptr(), words * 4)
    elif matchers:  # many rows: llguidance fills them on its own threads, without the GIL
        _parallel_executor().unsafe_compute_mask_ptr([(m, row) for row, m in matchers], mask.data_ptr(),
                                                     words * 4, num_rows)
    return mask


def apply_bitmask(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logits`` [B, V] with disallowed tokens at -inf (in place); ``mask`` on the logits' device."""
    vocab = logits.shape[-1]
    shifts = torch.arange(32, device=logits.device, dtype=torch.int32)
    bits = (mask[:, :, None] >> shifts) & 1  # [B, W, 32]
    allowed = bits.reshape(mask.shape[0], -1)[:, :vocab].bool()
    return logits.masked_fill_(~allowed, float("-inf"))
