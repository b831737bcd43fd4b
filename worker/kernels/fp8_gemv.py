"""Weight-only FP8 GEMV for decode: ``y = x @ (w * scale).T`` with e4m3 ``w`` [N, K] scaled per
output channel and ``x`` [M, K] (M at most 8 rows) left in its own precision.

At a few rows a linear layer is a read of its weights. The W8A8 path (per-token quantization of
``x``, then ``torch._scaled_mm``) spends more time on the activation's amax, division and cast, a
handful of small kernels per layer, than the matmul saves: on an H200 the FP8 Llama-3.1-8B shape
decoded at batch 1 slower than bf16 (147 against 207 tokens/s; the quantization is one kernel now,
``worker/kernels/fp8_quant.py``). Here one kernel streams the e4m3 weights once, widens them in
registers and applies the channel's scale to the dot product.

``Fp8Linear`` takes this path only with ``WARD_FP8_DECODE_GEMV=1`` until it has been timed against
the W8A8 path on a GPU (``bench/fp8_layers.py`` prints both per layer; ``bench/gpu_session.sh`` step
``fp8gemv`` the whole model at batch 1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.attention import num_sms
from worker.kernels.errors import KernelInputError
from worker.kernels.gemv_checks import check_gemv_operands

FP8_GEMV_MAX_ROWS = 8


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr, M, N, K,
    stride_xm, stride_wn, stride_ym,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid (N / BLOCK_N,): each program reads BLOCK_N weight rows over all of K, products gathered
    in a [ROWS, BLOCK_N, BLOCK_K] accumulator and summed over K once at the end."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.arange(0, ROWS)
    r_ok = rows < M
    acc = tl.zeros([ROWS, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_K]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :], mask=r_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)  # [ROWS, BLOCK_K]
        acc += x[:, None, :] * w[None, :, :]
    scale = tl.load(s_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    y = tl.sum(acc, axis=2) * scale[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + offs_n[None, :], y.to(y_ptr.dtype.element_ty),
             mask=r_ok[:, None] & n_ok[None, :])


def fp8_gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[M, K] (M <= 8) @ (e4m3 [N, K] * float scale [N] or [N, 1]).T -> [M, N] in x's dtype."""
    M, K = check_gemv_operands(x, weight, FP8_GEMV_MAX_ROWS, "FP8 GEMV")
    N = weight.shape[0]
    if scale.numel() != N:
        raise KernelInputError(f"scale must hold one value per output channel ({N}), got {tuple(scale.shape)}")
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_n = _block_n(N, num_sms(x.device))
    _fp8_gemv_kernel[(triton.cdiv(N, block_n),)](
        x, weight, scale.reshape(-1), y, M, N, K, x.stride(0), weight.stride(0), y.stride(0),
        ROWS=max(2, triton.next_power_of_2(M)), BLOCK_N=block_n, BLOCK_K=128, num_warps=4)
    return y


def _block_n(N: int, sms: int) -> int:
    """Rows of weights per program: as many as still leave two programs per SM."""
    for block_n in (32, 16, 8):
        if triton.cdiv(N, block_n) >= 2 * sms:
            return block_n
    return 8
