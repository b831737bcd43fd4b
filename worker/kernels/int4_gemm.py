"""Weight-only INT4 and INT8 matmul on Ward's packed layout (worker/model/quant/packing.py):
``y = x @ W`` with ``W[k, n] = (q[k, n] - zeros[k // group, n]) * scales[k // group, n]`` (or with
float ``offsets``, ``q[k, n] * scales[..] + offsets[..]``: GGUF Q4_1/Q4_K), ``q`` packed eight
(INT4) or four (INT8: 8-bit GPTQ, GGUF Q8_0) input rows to an int32 (lowest bits first).

Two kernels: a tiled GEMM that de-quantizes a [BLOCK_K, BLOCK_N] tile in registers and feeds
``tl.dot`` (prefill, large batches), and for a few rows (decode, memory-bound) a GEMV that streams
the packed weight once, split along K across programs so every SM reads, its partial sums added in
float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.attention import num_sms
from worker.kernels.errors import KernelInputError

GEMV_MAX_ROWS = 8


@triton.jit
def _dequant_tile(qw_ptr, s_ptr, z_ptr, offs_k, offs_n, k_ok, n_ok, stride_qk, stride_sg,
                  GROUP: tl.constexpr, HAS_OFFSETS: tl.constexpr, BITS: tl.constexpr = 4):
    """The float32 [BLOCK_K, BLOCK_N] weights of Ward's packed layout: BITS-bit codes along input
    rows, per-group scales and integer zero points (or float offsets)."""
    PER_WORD: tl.constexpr = 32 // BITS
    mask = k_ok[:, None] & n_ok[None, :]
    words = tl.load(qw_ptr + (offs_k // PER_WORD)[:, None] * stride_qk + offs_n[None, :], mask=mask, other=0)
    q = (words >> ((offs_k % PER_WORD) * BITS)[:, None]) & ((1 << BITS) - 1)
    g = offs_k // GROUP
    s = tl.load(s_ptr + g[:, None] * stride_sg + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + g[:, None] * stride_sg + offs_n[None, :], mask=mask, other=0)
    if HAS_OFFSETS:  # z holds float offsets
        return q.to(tl.float32) * s + z.to(tl.float32)
    return (q - z.to(tl.int32)).to(tl.float32) * s


@triton.jit
def _int4_gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, M, N, K,
    stride_xm, stride_qk, stride_sg, stride_ym,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_OFFSETS: tl.constexpr, BITS: tl.constexpr = 4,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, offs_k, offs_n, k_ok, n_ok, stride_qk, stride_sg, GROUP,
                          HAS_OFFSETS, BITS).to(x.dtype)
        acc += tl.dot(x, w)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, M, N, K, k_per_split,
    stride_xm, stride_qk, stride_sg, stride_ym,
    GROUP: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_OFFSETS: tl.constexpr, BITS: tl.constexpr = 4, ATOMIC: tl.constexpr = True,
):
    """Grid (N / BLOCK_N, splits): each program streams its K range of BLOCK_N columns once and applies
    it to every row of x (at most ROWS). A K tile is BLOCK_K / per-word packed rows of words, loaded
    once and unpacked in registers one code position at a time; BLOCK_K divides GROUP, so the tile has
    one scale and zero per column, applied to each word's partial sum (sum x (q - z) s =
    (x.q - z sum x) s). Products gather in a [ROWS, words, BLOCK_N] accumulator that is summed over
    the words once at the end, so the loop does no cross-thread reduction. ``ATOMIC``: add float32
    partial sums into y (K split across programs); else store y in its own dtype."""
    PER_WORD: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = BLOCK_K // PER_WORD
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.arange(0, ROWS)
    r_ok = rows < M
    offs_w = tl.arange(0, WORDS)
    acc = tl.zeros([ROWS, WORDS, BLOCK_N], dtype=tl.float32)
    k_lo = split * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    x_rows = x_ptr + rows[:, None] * stride_xm
    for k0 in range(k_lo, k_hi, BLOCK_K):
        words = tl.load(qw_ptr + (k0 // PER_WORD + offs_w)[:, None] * stride_qk + offs_n[None, :],
                        mask=n_ok[None, :], other=0)  # [WORDS, BLOCK_N]
        g = k0 // GROUP
        s = tl.load(s_ptr + g * stride_sg + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, None, :]
        z = tl.load(z_ptr + g * stride_sg + offs_n, mask=n_ok, other=0).to(tl.float32)[None, None, :]
        xq = tl.zeros([ROWS, WORDS, BLOCK_N], dtype=tl.float32)
        x_sum = tl.zeros([ROWS, WORDS], dtype=tl.float32)
        for i in tl.static_range(PER_WORD):
            x = tl.load(x_rows + (k0 + offs_w * PER_WORD + i)[None, :], mask=r_ok[:, None],
                        other=0.0).to(tl.float32)  # [ROWS, WORDS]: input row k0 + w * PER_WORD + i
            q = ((words >> (i * BITS)) & ((1 << BITS) - 1)).to(tl.float32)  # [WORDS, BLOCK_N]
            xq += x[:, :, None] * q[None, :, :]
            x_sum += x
        if HAS_OFFSETS:  # z holds float offsets: a weight is q s + z
            acc += xq * s + x_sum[:, :, None] * z
        else:
            acc += (xq - x_sum[:, :, None] * z) * s
    out = y_ptr + rows[:, None] * stride_ym + offs_n[None, :]
    total = tl.sum(acc, axis=1)  # [ROWS, BLOCK_N]
    if ATOMIC:
        tl.atomic_add(out, total, mask=r_ok[:, None] & n_ok[None, :])
    else:
        tl.store(out, total.to(y_ptr.dtype.element_ty), mask=r_ok[:, None] & n_ok[None, :])


@triton.jit
def _int4_gemv_rows_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, M, N, K, k_per_split,
    stride_xm, stride_qk, stride_sg, stride_ym,
    GROUP: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_OFFSETS: tl.constexpr, BITS: tl.constexpr = 4,
):
    """The GEMV for 3 to 8 rows (measured faster there than ``_int4_gemv_kernel``, whose per-row
    accumulators grow with the rows). Grid (N / BLOCK_N, splits): each program de-quantizes its K
    range of BLOCK_N columns once and applies it to every row of x, adding float32 partial sums into y."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    rows = tl.arange(0, ROWS)
    r_ok = rows < M
    acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    k_lo = split * k_per_split
    for k0 in range(k_lo, k_lo + k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w = _dequant_tile(qw_ptr, s_ptr, z_ptr, offs_k, offs_n, k_ok, n_ok, stride_qk, stride_sg, GROUP,
                          HAS_OFFSETS, BITS)  # [BLOCK_K, BLOCK_N]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :], mask=r_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)  # [ROWS, BLOCK_K]
        acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    tl.atomic_add(y_ptr + rows[:, None] * stride_ym + offs_n[None, :], acc, mask=r_ok[:, None] & n_ok[None, :])


def _check(x, qweight, scales, zeros, group_size, offsets=None, bits=4):
    if bits not in (4, 8):
        raise KernelInputError(f"codes of {bits} bits are not supported (4, 8)")
    if x.dim() != 2 or x.stride(-1) != 1:
        raise KernelInputError(f"x must be [M, K] with a contiguous last dim, got {tuple(x.shape)}")
    M, K = x.shape
    per_word = 32 // bits
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] * per_word != K or not qweight.is_contiguous():
        raise KernelInputError(f"qweight must be contiguous int32 [K / {per_word}, N] = [{K // per_word}, N], "
                               f"got {tuple(qweight.shape)}")
    N = qweight.shape[1]
    if group_size < 1 or K % group_size:
        raise KernelInputError(f"group_size {group_size} must divide K = {K}")
    shape = (K // group_size, N)
    if (zeros is None) == (offsets is None):
        raise KernelInputError("give either uint8 zeros or float offsets")
    z = zeros if zeros is not None else offsets
    if tuple(scales.shape) != shape or tuple(z.shape) != shape or (zeros is not None and zeros.dtype != torch.uint8):
        raise KernelInputError(f"scales and uint8 zeros (or offsets) must be {shape}, got {tuple(scales.shape)}, "
                               f"{tuple(z.shape)}")
    if not (scales.is_contiguous() and z.is_contiguous()):
        raise KernelInputError("scales and zeros must be contiguous")
    return M, N, K


def int4_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                group_size: int, *, offsets: torch.Tensor | None = None, force: str | None = None) -> torch.Tensor:
    """[M, K] @ INT4 [K, N] -> [M, N] in x's dtype, with uint8 ``zeros`` or float ``offsets``.
    ``force``: "gemm" or "gemv" (tests)."""
    return int_matmul(x, qweight, scales, zeros, group_size, bits=4, offsets=offsets, force=force)


def int_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               group_size: int, *, bits: int, offsets: torch.Tensor | None = None,
               force: str | None = None) -> torch.Tensor:
    """[M, K] @ INT4 or INT8 [K, N] -> [M, N] in x's dtype (``int4_matmul``'s contract, ``bits`` wide)."""
    M, N, K = _check(x, qweight, scales, zeros, group_size, offsets, bits)
    has_offsets = offsets is not None
    zeros = offsets if has_offsets else zeros
    use_gemv = force == "gemv" or (force is None and M <= GEMV_MAX_ROWS)
    if use_gemv:
        if M > GEMV_MAX_ROWS:
            raise KernelInputError(f"the GEMV takes at most {GEMV_MAX_ROWS} rows, got {M}")
        return _gemv(x, qweight, scales, zeros, group_size, bits, has_offsets, M, N, K)
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_m = 16 if M <= 16 else (64 if M <= 64 else 128)
    block_n, block_k = 128, min(64, group_size)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _int4_gemm_kernel[grid](x, qweight, scales, zeros, y, M, N, K, x.stride(0), qweight.stride(0), scales.stride(0),
                            y.stride(0), GROUP=group_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                            HAS_OFFSETS=has_offsets, BITS=bits, num_warps=4 if block_m <= 64 else 8, num_stages=3)
    return y


def _gemv_block_k(group_size: int, bits: int) -> int:
    """The K tile of ``_int4_gemv_kernel``: a power of two dividing the group (one scale per column
    per tile), at least one packed word deep."""
    block_k = 128
    while block_k > 32 // bits and group_size % block_k:
        block_k //= 2
    return block_k


def _gemv_plan(N: int, K: int, block_k: int, sms: int) -> tuple[int, int]:
    """(BLOCK_N, K splits): 32-column programs (the fastest on an H200 for every Llama-3.1-8B
    projection at batch 1, against 64 and 128: bench/int4_gemv.py), enough of them to keep every SM
    streaming. Wide layers fill the card over all of K (no partial sums to add); narrow ones split K
    into about four programs per SM, adding float32 partial sums."""
    block_n = 32
    columns = triton.cdiv(N, block_n)
    if columns >= 2 * sms:
        return block_n, 1
    return block_n, max(1, min(K // block_k, triton.cdiv(4 * sms, columns)))


def _k_ranges(K: int, splits: int, block_k: int) -> tuple[int, int]:
    """(K per program, programs along K) for about ``splits`` programs, each with whole K tiles."""
    k_per_split = triton.cdiv(triton.cdiv(K, splits), block_k) * block_k
    return k_per_split, triton.cdiv(K, k_per_split)


def _gemv(x, qweight, scales, zeros, group_size: int, bits: int, has_offsets: bool, M: int, N: int, K: int):
    rows = max(2, triton.next_power_of_2(M))
    block_k = _gemv_block_k(group_size, bits)
    if rows > 2 or group_size % block_k:  # several rows, or groups no K tile fits in
        return _gemv_rows(x, qweight, scales, zeros, group_size, bits, has_offsets, M, N, K, rows)
    block_n, splits = _gemv_plan(N, K, block_k, num_sms(x.device))
    k_per_split, splits = _k_ranges(K, splits, block_k)
    atomic = splits > 1
    y = torch.zeros(M, N, dtype=torch.float32, device=x.device) if atomic else torch.empty(M, N, dtype=x.dtype,
                                                                                           device=x.device)
    _int4_gemv_kernel[(triton.cdiv(N, block_n), splits)](
        x, qweight, scales, zeros, y, M, N, K, k_per_split, x.stride(0), qweight.stride(0), scales.stride(0),
        y.stride(0), GROUP=group_size, ROWS=rows, BLOCK_N=block_n, BLOCK_K=block_k, HAS_OFFSETS=has_offsets,
        BITS=bits, ATOMIC=atomic, num_warps=4)
    return y.to(x.dtype) if atomic else y


def _gemv_rows(x, qweight, scales, zeros, group_size: int, bits: int, has_offsets: bool, M: int, N: int, K: int,
               rows: int):
    y = torch.zeros(M, N, dtype=torch.float32, device=x.device)
    block_n, block_k = 128, 32
    col_programs = triton.cdiv(N, block_n)
    # enough programs to cover the SMs several times, each with whole K tiles
    splits = max(1, min(K // block_k, 4 * num_sms(x.device) // max(col_programs, 1)))
    k_per_split, splits = _k_ranges(K, splits, block_k)
    _int4_gemv_rows_kernel[(col_programs, splits)](
        x, qweight, scales, zeros, y, M, N, K, k_per_split, x.stride(0), qweight.stride(0), scales.stride(0),
        y.stride(0), GROUP=group_size, ROWS=rows, BLOCK_N=block_n, BLOCK_K=block_k, HAS_OFFSETS=has_offsets,
        BITS=bits, num_warps=4)
    return y.to(x.dtype)
