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


def fill_bitmask(matchers: list[Any], vocab_size: int) -> torch.Tensor:
    """An int32 ``[len(matchers), ceil(V/32)]`` mask, row i from matcher i."""
    words = (vocab_size + 31) // 32
    mask = torch.empty((len(matchers), words), dtype=torch.int32)
    if len(matchers) == 1:
        matchers[0].unsafe_compute_mask_ptr(mask.data_ptr(), words * 4)
    else:  # many rows: llguidance fills them on its own threads, without the GIL
        _parallel_executor().unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], mask.data_ptr(),
                                                     words * 4, len(matchers))
    return mask


def apply_bitmask(logits: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``logits`` [B, V] (in place) with the tokens that ``mask`` [G, W] disallows at -inf in ``rows`` [G]:
    one Triton pass on CUDA, torch elsewhere."""
    if logits.is_cuda and logits.dtype == torch.float32:
        from worker.kernels import apply_token_bitmask_

        return apply_token_bitmask_(logits, mask, rows)
    return apply_bitmask_torch(logits, mask, rows)


def apply_bitmask_torch(logits: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The torch path of ``apply_bitmask`` (and the kernel's reference)."""
    vocab = logits.shape[-1]
    shifts = torch.arange(32, device=logits.device, dtype=torch.int32)
    bits = (mask[:, :, None] >> shifts) & 1  # [G, W, 32]: only the grammar rows are unpacked
    allowed = bits.reshape(mask.shape[0], -1)[:, :vocab].bool()
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))
    return logits
