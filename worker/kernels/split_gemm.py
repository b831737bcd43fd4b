"""Split-K GEMM: ``y = x @ W.T (+ bias)`` for x [M, K] with 9 <= M <= 512 rows and W in the checkpoint's
[N, K] layout (no copy), for the decode batches that leave a narrow projection's tiles too few for
the card (``split_gemm_config.py`` says why and how the plan is chosen).

Programs are ordered with the row tiles of one column tile next to each other, so a weight tile is
read from memory once and the other row tiles find it in L2. A split's partial sums go to the same
float32 workspace and per-tile tickets as the decode GEMV's split launches (``decode_gemv.workspace``):
the program that finishes a tile last adds the splits in order, writes the output and re-arms the
ticket. One launch, deterministic sums, nothing allocated per call once the workspace is reserved,
nothing read back on the host, so a call can be captured in a CUDA graph.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from worker.kernels.attention import num_sms
from worker.kernels.decode_gemv import workspace
from worker.kernels.errors import KernelInputError
from worker.kernels.split_gemm_config import MAX_ROWS, MIN_ROWS, SplitGemmPlan, choose_plan, k_per_split

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _split_gemm_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, part_ptr, ticket_ptr,
    M, N, K, K_PER_SPLIT, stride_xm, stride_wn, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, EXACT_FP32: tl.constexpr,
):
    """Grid (row tiles x column tiles, SPLIT_K); program 0's axis runs over row tiles fastest. The loop's
    bounds are plain ints, never program-dependent."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tile % tiles_m
    pid_n = tile // tiles_m
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < N
    k_lo = pid_k * K_PER_SPLIT
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kk in range(0, K_PER_SPLIT, BLOCK_K):
        offs_k = k_lo + kk + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        if EVEN_K:
            x = tl.load(x_rows + offs_k[None, :], mask=r_ok[:, None], other=0.0)
        else:
            x = tl.load(x_rows + offs_k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        if EVEN_N and EVEN_K:  # unmasked weight loads vectorise best
            w = tl.load(w_cols + offs_k[:, None])
        else:
            w = tl.load(w_cols + offs_k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if EXACT_FP32:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
    if SPLIT_K > 1:
        # partials [SPLIT_K, tiles, BLOCK_M, BLOCK_N]; only the real rows are written and read
        size = BLOCK_M * BLOCK_N
        here = (tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]).to(tl.int64)
        tile_base = tile.to(tl.int64) * size
        split_stride = tl.num_programs(0).to(tl.int64) * size
        tl.store(part_ptr + pid_k * split_stride + tile_base + here, acc, mask=r_ok[:, None])
        # every thread's partial is written before one thread takes the ticket (release at GPU scope)
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT_K - 1:
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):  # split order: the same sum on every call
                acc += tl.load(part_ptr + s * split_stride + tile_base + here, mask=r_ok[:, None], other=0.0,
                               cache_modifier=".cg")
            tl.atomic_xchg(ticket_ptr + tile, 0)  # re-armed for the next call (or graph replay)
            _store(acc, b_ptr, y_ptr, rows, cols, r_ok, n_ok, stride_ym, HAS_BIAS)
    else:
        _store(acc, b_ptr, y_ptr, rows, cols, r_ok, n_ok, stride_ym, HAS_BIAS)


@triton.jit
def _store(acc, b_ptr, y_ptr, rows, cols, r_ok, n_ok, stride_ym, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * stride_ym + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=r_ok[:, None] & n_ok[None, :])


def plan_for(rows: int, weight: torch.Tensor, plan: SplitGemmPlan | None = None) -> SplitGemmPlan:
    return plan or choose_plan(rows, weight.shape[0], weight.shape[1], num_sms(weight.device))


def workspace_need(n: int, plan: SplitGemmPlan, rows: int) -> tuple[int, int]:
    """(float32 partials, tickets) a launch of ``rows`` rows on an [n, K] weight in ``plan`` needs."""
    if plan.split_k == 1:
        return 0, 0
    tiles = triton.cdiv(rows, plan.block_m) * triton.cdiv(n, plan.block_n)
    return plan.split_k * tiles * plan.block_m * plan.block_n, tiles


@functools.lru_cache(maxsize=None)
def _most_needed(n: int, k: int, sms: int, max_rows: int) -> tuple[int, int]:
    needs = [workspace_need(n, choose_plan(rows, n, k, sms), rows) for rows in range(MIN_ROWS, max_rows + 1)]
    return max(f for f, _ in needs), max(t for _, t in needs)


def reserve_workspace(weight: torch.Tensor, max_rows: int = MAX_ROWS) -> None:
    """Sizes the device's shared split workspace for launches of MIN_ROWS..``max_rows`` rows on
    ``weight`` in the plans they would take (call before CUDA-graph capture)."""
    n, k = weight.shape
    workspace(weight.device).reserve(*_most_needed(n, k, num_sms(weight.device), max_rows))


def split_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               plan: SplitGemmPlan | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for x [M, K] (MIN_ROWS <= M <= MAX_ROWS), weight [N, K], bias [N]:
    float16/bfloat16/float32, one dtype for all, last dims contiguous. Returns a new tensor of x's
    dtype (or fills ``out``). ``plan`` overrides the tile plan (benchmarks); a split plan needs the
    device workspace reserved first (``reserve_workspace``) when it runs under CUDA-graph capture."""
    M, K = _check(x, weight, bias, out)
    N = weight.shape[0]
    plan = plan_for(M, weight, plan)
    if out is None:
        out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if N == 0:
        return out
    tiles = triton.cdiv(M, plan.block_m) * triton.cdiv(N, plan.block_n)
    per = k_per_split(K, plan)
    if plan.split_k > 1:
        space = workspace(x.device)
        space.reserve(*workspace_need(N, plan, M))
        partials, tickets = space.partials, space.tickets
    else:
        partials, tickets = out, out  # never read: SPLIT_K == 1 compiles the split path away
    _split_gemm_kernel[(tiles, plan.split_k)](
        x, weight, bias if bias is not None else weight, out, partials, tickets,
        M, N, K, per, x.stride(0), weight.stride(0), out.stride(0),
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, SPLIT_K=plan.split_k,
        HAS_BIAS=bias is not None, EVEN_N=N % plan.block_n == 0, EVEN_K=K % plan.block_k == 0 and per * plan.split_k == K,
        EXACT_FP32=x.dtype == torch.float32, num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    return out


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None) -> tuple[int, int]:
    if x.dim() != 2 or x.stride(-1) != 1:
        raise KernelInputError(f"x must be [M, K] with a contiguous last dim, got {tuple(x.shape)}")
    M, K = x.shape
    if not MIN_ROWS <= M <= MAX_ROWS:
        raise KernelInputError(f"the split GEMM takes {MIN_ROWS} to {MAX_ROWS} rows, got {M}")
    if weight.dim() != 2 or weight.shape[1] != K or weight.stride(-1) != 1:
        raise KernelInputError(f"weight must be [N, {K}] with a contiguous last dim, got {tuple(weight.shape)}")
    if x.dtype not in _DTYPES or weight.dtype != x.dtype:
        raise KernelInputError(f"x and weight must share a float dtype, got {x.dtype} and {weight.dtype}")
    N = weight.shape[0]
    if bias is not None and (bias.shape != (N,) or bias.stride(0) != 1 or bias.dtype != x.dtype):
        raise KernelInputError(f"bias must be contiguous [{N}] {x.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    if out is not None and (out.shape != (M, N) or out.dtype != x.dtype or out.stride(-1) != 1):
        raise KernelInputError(f"out must be [{M}, {N}] {x.dtype} with a contiguous last dim")
    for name, t in (("weight", weight), ("bias", bias), ("out", out)):
        if t is not None and t.device != x.device:
            raise KernelInputError(f"{name} is on {t.device}, x on {x.device}")
    return M, K
