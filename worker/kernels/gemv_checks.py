"""Host-side checks shared by the decode-sized GEMVs (bf16 and FP8 weights)."""
from __future__ import annotations

import torch

from worker.kernels.errors import KernelInputError


def check_gemv_operands(x: torch.Tensor, weight: torch.Tensor, max_rows: int, kernel: str) -> tuple[int, int]:
    """(M, K) of x [M <= max_rows, K] against weight [N, K], both with a contiguous last dim."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise KernelInputError(f"x must be [M, K] with a contiguous last dim, got {tuple(x.shape)}")
    M, K = x.shape
    if M > max_rows:
        raise KernelInputError(f"the {kernel} takes at most {max_rows} rows, got {M}")
    if weight.dim() != 2 or weight.shape[1] != K or weight.stride(-1) != 1:
        raise KernelInputError(f"weight must be [N, {K}] with a contiguous last dim, got {tuple(weight.shape)}")
    return M, K
