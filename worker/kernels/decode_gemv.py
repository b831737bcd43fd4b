"""Decode GEMV: ``y = x @ W.T (+ bias)`` for x [M, K] with M <= 8 rows and W in the checkpoint's
[N, K] layout (no copy), optionally with the Llama MLP's ``silu(gate) * up`` (or Gemma's GeGLU)
applied on the way out.

At a few rows a projection is a read of its weights. Each program streams ``block_n`` weight rows
over its K range; narrow layers split K across programs. Measured on an H200 as CUDA-graph replays
(docs/performance.md, 2026-12-05): level with cuBLAS on the 8B qkv, 3-25% slower on o_proj and
down, and with the SiLU epilogue 8% faster than cuBLAS plus ``silu_and_mul`` at one row: the gain
is the fused epilogue, not the read.
A split's partial sums go to a float32 workspace and the program that finishes a column tile last
(an atomic ticket per tile) adds them in split order and writes the output, then re-arms the ticket:
one launch, no zeroing kernel, deterministic sums, nothing allocated per call, nothing read back on
the host, so a call can be captured in a CUDA graph.

With ``silu=True`` the weight is a fused gate_up [2I, K]: the program owning output columns j reads
gate rows j and up rows I + j, so ``silu_and_mul`` and the [M, 2I] intermediate disappear.

With ``weight_scale`` the weight is e4m3 (FP8) with one float32 scale per row (per output channel,
as ``Fp8Linear`` holds it): each tile is widened to the activations' dtype in registers and the
sums are scaled in the epilogue, before the bias. At a few rows this reads half the bytes of bf16
without quantizing the activations (the W8A8 path's ``torch._scaled_mm`` at one row reads its
weights at a fraction of the card's bandwidth).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from worker.kernels.activation import gelu_tanh_f32, silu_f32
from worker.kernels.attention import num_sms
from worker.kernels.decode_gemv_config import BLOCK_M, MAX_ROWS, GemvPlan, choose_plan, choose_w8a8_plan, k_per_split
from worker.kernels.errors import KernelInputError
from worker.kernels.gemv_checks import check_gemv_operands
from worker.kernels.gemv_tuned import tuned_table
from worker.kernels.pdl import launch_options, use_pdl

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Rows an e4m3-by-e4m3 launch pads x to: Hopper's warpgroup MMA takes e4m3 operands as they are from 64
# rows; below that Triton's per-warp MMA widens both operands to float16 first (sm_90 PTX, checked by
# tests/kernels_compile.py), the conversion work the W8A8 dot is there to avoid
W8A8_BLOCK_M = 64


@triton.jit
def _decode_gemv_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, part_ptr, ticket_ptr, res_ptr, sq_ptr, nw_ptr, ws_ptr, xs_ptr,
    M, N, K, K_PER_SPLIT, SQ_TILES, eps,
    stride_xm, stride_wn, stride_ym, stride_rm,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    SILU: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
    EXACT_FP32: tl.constexpr, USE_PDL: tl.constexpr = False, ADD_RESIDUAL: tl.constexpr = False,
    NORM_INPUT: tl.constexpr = False, SQ_TILES_P: tl.constexpr = 16, W_SCALED: tl.constexpr = False,
    FP8_MATH: tl.constexpr = 0, GELU_TANH: tl.constexpr = False,
):
    """Grid (cdiv(N, BLOCK_N), SPLIT_K). N is the output width (with SILU the intermediate size; the
    up rows start at row N of W). The loop's bounds are plain ints, never program-dependent.

    With ``USE_PDL`` the program loads its first weight tile, which no kernel writes, while the
    kernel before it still runs, then waits for that kernel (x, the workspace) before the rest.
    With ``ADD_RESIDUAL`` the output is ``y + residual`` (res_ptr, row stride stride_rm) and each
    column tile also writes its rows' sums of squares of that output to ``sq_ptr`` [tiles, BLOCK_M].
    With ``NORM_INPUT`` x is such an output: the program adds the ``SQ_TILES`` sums of squares of each
    row and multiplies x by its reciprocal RMS and by the norm weight ``nw_ptr`` on the way in, as
    the RMSNorm kernel rounds it (worker/kernels/norm.py). With ``W_SCALED`` W is e4m3 and row r of the
    product is multiplied by ``ws_ptr[r]`` (the up rows' by ``ws_ptr[N + r]``) before the bias.
    ``FP8_MATH`` (e4m3 weights only) says how their dot is taken: 0, widened to x's dtype; 1, the
    weight and x widened to float16 (one conversion instruction per two e4m3 values instead of
    three; the same products while x is within float16's range); 2, x is e4m3 codes too, with one
    float32 scale per row at ``xs_ptr``, and the dot is e4m3 by e4m3 (W8A8, no widening). With SILU
    and ``GELU_TANH`` the gated epilogue takes Gemma's tanh-approximated GELU in place of SiLU."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, BLOCK_M)
    r_ok = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < N
    k_lo = pid_k * K_PER_SPLIT
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wn
    up_rows = w_ptr + (cols + N).to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if USE_PDL:
        offs_k = k_lo + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        w, u = _load_tiles(w_rows, up_rows, offs_k, n_ok, k_ok, SILU, EVEN_N, EVEN_K)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
        rstd = _input_rstd(sq_ptr, rows, r_ok, SQ_TILES, K, eps, BLOCK_M, SQ_TILES_P, NORM_INPUT)
        x = _load_x(x_ptr, nw_ptr, rows, r_ok, offs_k, k_ok, stride_xm, rstd, NORM_INPUT)
        acc, acc_up = _dots(x, w, u, acc, acc_up, SILU, EXACT_FP32, FP8_MATH)
        for kk in range(BLOCK_K, K_PER_SPLIT, BLOCK_K):
            acc, acc_up = _k_step(x_ptr, nw_ptr, w_rows, up_rows, rows, r_ok, n_ok, k_lo + kk, K, stride_xm, rstd,
                                  acc, acc_up, BLOCK_K, SILU, EVEN_N, EVEN_K, EXACT_FP32, NORM_INPUT, FP8_MATH)
    else:
        rstd = _input_rstd(sq_ptr, rows, r_ok, SQ_TILES, K, eps, BLOCK_M, SQ_TILES_P, NORM_INPUT)
        for kk in range(0, K_PER_SPLIT, BLOCK_K):
            acc, acc_up = _k_step(x_ptr, nw_ptr, w_rows, up_rows, rows, r_ok, n_ok, k_lo + kk, K, stride_xm, rstd,
                                  acc, acc_up, BLOCK_K, SILU, EVEN_N, EVEN_K, EXACT_FP32, NORM_INPUT, FP8_MATH)
    _finish(acc, acc_up, b_ptr, y_ptr, part_ptr, ticket_ptr, res_ptr, sq_ptr, ws_ptr, xs_ptr, pid_n, pid_k, rows, cols,
            r_ok, n_ok, N, stride_ym, stride_rm, BLOCK_M, BLOCK_N, SPLIT_K, SILU, HAS_BIAS, ADD_RESIDUAL, W_SCALED,
            FP8_MATH == 2, GELU_TANH)


@triton.jit
def _input_rstd(sq_ptr, rows, r_ok, SQ_TILES, K, eps, BLOCK_M: tl.constexpr, SQ_TILES_P: tl.constexpr,
                NORM_INPUT: tl.constexpr):
    """Each row's reciprocal RMS from the producer's per-tile sums of squares (tile order: the same
    sum on every call); ones when the input is not normalised."""
    if NORM_INPUT:
        t = tl.arange(0, SQ_TILES_P)
        sq = tl.load(sq_ptr + t[None, :] * BLOCK_M + rows[:, None], mask=r_ok[:, None] & (t < SQ_TILES)[None, :],
                     other=0.0)
        return tl.math.rsqrt(tl.sum(sq, axis=1) / K + eps)
    return tl.full([BLOCK_M], 1.0, dtype=tl.float32)


@triton.jit
def _k_step(x_ptr, nw_ptr, w_rows, up_rows, rows, r_ok, n_ok, k_start, K, stride_xm, rstd, acc, acc_up,
            BLOCK_K: tl.constexpr, SILU: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
            EXACT_FP32: tl.constexpr, NORM_INPUT: tl.constexpr, FP8_MATH: tl.constexpr = 0):
    """One K step from ``k_start``: acc += x @ W[cols, k].T (and acc_up with the up rows when SILU)."""
    offs_k = k_start + tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    x = _load_x(x_ptr, nw_ptr, rows, r_ok, offs_k, k_ok, stride_xm, rstd, NORM_INPUT)
    w, u = _load_tiles(w_rows, up_rows, offs_k, n_ok, k_ok, SILU, EVEN_N, EVEN_K)
    return _dots(x, w, u, acc, acc_up, SILU, EXACT_FP32, FP8_MATH)


@triton.jit
def _load_x(x_ptr, nw_ptr, rows, r_ok, offs_k, k_ok, stride_xm, rstd, NORM_INPUT: tl.constexpr):
    """The input tile x[rows, offs_k]; with NORM_INPUT ``weight * (x * rstd)`` rounded as RMSNorm rounds."""
    x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
    if NORM_INPUT:
        norm_w = tl.load(nw_ptr + offs_k, mask=k_ok, other=0.0)
        normed = (x.to(tl.float32) * rstd[:, None]).to(x.dtype)
        x = (normed.to(tl.float32) * norm_w.to(tl.float32)[None, :]).to(x.dtype)
    return x


@triton.jit
def _load_tiles(w_rows, up_rows, offs_k, n_ok, k_ok, SILU: tl.constexpr, EVEN_N: tl.constexpr,
                EVEN_K: tl.constexpr):
    """The weight tile W[cols, offs_k] (and with SILU the up rows' tile; else the same tile again)."""
    if EVEN_N and EVEN_K:  # unmasked weight loads vectorise best
        w = tl.load(w_rows + offs_k[None, :])
    else:
        w = tl.load(w_rows + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    u = w
    if SILU:
        if EVEN_N and EVEN_K:
            u = tl.load(up_rows + offs_k[None, :])
        else:
            u = tl.load(up_rows + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    return w, u


@triton.jit
def _dots(x, w, u, acc, acc_up, SILU: tl.constexpr, EXACT_FP32: tl.constexpr, FP8_MATH: tl.constexpr = 0):
    if FP8_MATH == 1:
        x = x.to(tl.float16)
        w = w.to(tl.float16)
        u = u.to(tl.float16)
    elif FP8_MATH == 0:
        w = w.to(x.dtype)  # an e4m3 tile widened in registers (no-op for float weights)
        u = u.to(x.dtype)
    if EXACT_FP32:
        acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
    else:
        acc = tl.dot(x, tl.trans(w), acc)
    if SILU:
        if EXACT_FP32:
            acc_up = tl.dot(x, tl.trans(u), acc_up, input_precision="ieee")
        else:
            acc_up = tl.dot(x, tl.trans(u), acc_up)
    return acc, acc_up


@triton.jit
def _finish(acc, acc_up, b_ptr, y_ptr, part_ptr, ticket_ptr, res_ptr, sq_ptr, ws_ptr, xs_ptr, pid_n, pid_k, rows, cols,
            r_ok, n_ok, N, stride_ym, stride_rm, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr,
            SILU: tl.constexpr, HAS_BIAS: tl.constexpr, ADD_RESIDUAL: tl.constexpr, W_SCALED: tl.constexpr,
            X_SCALED: tl.constexpr, GELU_TANH: tl.constexpr = False):
    """Writes the output tile: directly, or with SPLIT_K > 1 through the partials and the tile's ticket
    (the last program to finish adds the splits in order and re-arms the ticket)."""
    if SPLIT_K > 1:
        # partials [SPLIT_K, tiles, 2, BLOCK_M, BLOCK_N]; only the M real rows are written and read
        tile = BLOCK_M * BLOCK_N
        here = (rows[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]).to(tl.int64)
        tile_base = pid_n.to(tl.int64) * (2 * tile)
        split_stride = tl.num_programs(0).to(tl.int64) * (2 * tile)
        tl.store(part_ptr + pid_k * split_stride + tile_base + here, acc, mask=r_ok[:, None])
        if SILU:
            tl.store(part_ptr + pid_k * split_stride + tile_base + tile + here, acc_up, mask=r_ok[:, None])
        # every thread's partial is written before one thread takes the ticket (release at GPU scope)
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT_K - 1:
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):  # split order: the same sum on every call
                acc += tl.load(part_ptr + s * split_stride + tile_base + here, mask=r_ok[:, None], other=0.0,
                               cache_modifier=".cg")
                if SILU:
                    acc_up += tl.load(part_ptr + s * split_stride + tile_base + tile + here, mask=r_ok[:, None],
                                      other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(ticket_ptr + pid_n, 0)  # re-armed for the next call (or graph replay)
            _epilogue(acc, acc_up, b_ptr, y_ptr, res_ptr, sq_ptr, ws_ptr, xs_ptr, pid_n, rows, cols, r_ok, n_ok, N,
                      stride_ym, stride_rm, BLOCK_M, SILU, HAS_BIAS, ADD_RESIDUAL, W_SCALED, X_SCALED, GELU_TANH)
    else:
        _epilogue(acc, acc_up, b_ptr, y_ptr, res_ptr, sq_ptr, ws_ptr, xs_ptr, pid_n, rows, cols, r_ok, n_ok, N,
                  stride_ym, stride_rm, BLOCK_M, SILU, HAS_BIAS, ADD_RESIDUAL, W_SCALED, X_SCALED, GELU_TANH)


@triton.jit
def _epilogue(acc, acc_up, b_ptr, y_ptr, res_ptr, sq_ptr, ws_ptr, xs_ptr, pid_n, rows, cols, r_ok, n_ok, N, stride_ym,
              stride_rm, BLOCK_M: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr,
              ADD_RESIDUAL: tl.constexpr, W_SCALED: tl.constexpr, X_SCALED: tl.constexpr = False,
              GELU_TANH: tl.constexpr = False):
    dtype = y_ptr.dtype.element_ty
    if X_SCALED:
        x_scale = tl.load(xs_ptr + rows, mask=r_ok, other=0.0)[:, None]
        acc *= x_scale
        if SILU:
            acc_up *= x_scale
    if W_SCALED:
        acc *= tl.load(ws_ptr + cols, mask=n_ok, other=0.0)[None, :]
        if SILU:
            acc_up *= tl.load(ws_ptr + N + cols, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if SILU:
        if HAS_BIAS:
            acc_up += tl.load(b_ptr + N + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        # Round where a gate_up projection followed by silu_and_mul (gelu_tanh_and_mul) would: gate
        # and up to the activations' dtype, then the activation, then the product.
        gate = acc.to(dtype).to(tl.float32)
        up = acc_up.to(dtype).to(tl.float32)
        activated = gelu_tanh_f32(gate) if GELU_TANH else silu_f32(gate)
        acc = activated.to(dtype).to(tl.float32) * up
    mask = r_ok[:, None] & n_ok[None, :]
    out = acc.to(dtype)
    if ADD_RESIDUAL:
        # the projection rounded to the activations' dtype, then the residual add rounded again, as
        # a projection followed by the RMSNorm kernel's residual add would round them
        residual = tl.load(res_ptr + rows[:, None] * stride_rm + cols[None, :], mask=mask, other=0.0)
        out = (out.to(tl.float32) + residual.to(tl.float32)).to(dtype)
        summed = tl.where(mask, out.to(tl.float32), 0.0)
        tl.store(sq_ptr + pid_n * BLOCK_M + rows, tl.sum(summed * summed, axis=1), mask=r_ok)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], out, mask=mask)


class GemvWorkspace:
    """Partial sums and per-tile tickets of split-K launches on one device, shared by every layer
    (launches on one stream run one after another, and each leaves its tickets at zero).

    Sized up front (``reserve``) by whoever knows the layers, so that nothing is allocated while a
    CUDA graph is being captured."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.partials = torch.empty(0, dtype=torch.float32, device=device)
        self.tickets = torch.zeros(0, dtype=torch.int32, device=device)

    def reserve(self, partial_floats: int, tickets: int) -> None:
        if partial_floats > self.partials.numel():
            self._refuse_while_capturing()
            self.partials = torch.empty(partial_floats, dtype=torch.float32, device=self.device)
        if tickets > self.tickets.numel():
            self._refuse_while_capturing()
            self.tickets = torch.zeros(tickets, dtype=torch.int32, device=self.device)

    def _refuse_while_capturing(self) -> None:
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise KernelInputError("the decode GEMV's workspace must be reserved before CUDA-graph capture")


_WORKSPACES: dict[torch.device, GemvWorkspace] = {}


def workspace(device: torch.device) -> GemvWorkspace:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device not in _WORKSPACES:
        _WORKSPACES[device] = GemvWorkspace(device)
    return _WORKSPACES[device]


@functools.lru_cache(maxsize=None)
def _cuda_shared_limit(device_index: int) -> int:
    props = torch.cuda.get_device_properties(device_index)
    # the opt-in figure is what a kernel may ask for; builds without it report only the default
    return getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block


def shared_memory_limit(device: torch.device) -> int | None:
    """Shared memory a program may use on ``device`` (None off CUDA: the interpreter has no limit)."""
    if device.type != "cuda":
        return None
    return _cuda_shared_limit(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_device_name(device_index: int) -> str:
    return torch.cuda.get_device_name(device_index)


def device_name(device: torch.device) -> str | None:
    """The card's name as CUDA reports it (``NVIDIA H200``), which keys its tuned plans; None off CUDA."""
    if device.type != "cuda":
        return None
    return _cuda_device_name(device.index if device.index is not None else torch.cuda.current_device())


def plan_for(weight: torch.Tensor, silu: bool = False, plan: GemvPlan | None = None, rows: int = 1) -> GemvPlan:
    """``plan``, else the plan ``choose_plan`` gives a launch of ``rows`` rows on ``weight``, with the
    card's tuned plans (``ward tune gemv``) where it has them."""
    if plan is not None:
        return plan
    n = weight.shape[0] // 2 if silu else weight.shape[0]
    return choose_plan(n, weight.shape[1], num_sms(weight.device), silu, weight.element_size(),
                       shared_memory_limit(weight.device), rows, tuned_table(device_name(weight.device)))


def workspace_need(weight: torch.Tensor, silu: bool = False, plan: GemvPlan | None = None,
                   block_m: int = BLOCK_M) -> tuple[int, int]:
    """(float32 partials, tickets) a split launch on ``weight`` needs (zeros when it does not split);
    without ``plan``, the most that any row count's plan needs. ``block_m``: the rows x is padded to
    (``W8A8_BLOCK_M`` for an e4m3 x)."""
    if plan is None:
        needs = [workspace_need(weight, silu, plan_for(weight, silu, None, rows), block_m) for rows in (1, MAX_ROWS)]
        return max(n for n, _ in needs), max(t for _, t in needs)
    if plan.split_k == 1:
        return 0, 0
    n = weight.shape[0] // 2 if silu else weight.shape[0]
    tiles = triton.cdiv(n, plan.block_n)
    return plan.split_k * tiles * 2 * block_m * plan.block_n, tiles


def reserve_workspace(weight: torch.Tensor, silu: bool = False, plan: GemvPlan | None = None,
                      block_m: int = BLOCK_M) -> None:
    """Sizes the device's shared workspace for launches on ``weight`` (call before graph capture);
    ``block_m`` as ``workspace_need`` takes it."""
    workspace(weight.device).reserve(*workspace_need(weight, silu, plan, block_m))


def w8a8_plan_for(weight: torch.Tensor, silu: bool = False, rows: int = 1) -> GemvPlan:
    """The plan of an e4m3-x launch of ``rows`` rows on ``weight``, the card's tuned plans included."""
    n = weight.shape[0] // 2 if silu else weight.shape[0]
    return choose_w8a8_plan(n, weight.shape[1], silu, rows, tuned_table(device_name(weight.device)))


def reserve_w8a8_workspace(weight: torch.Tensor, silu: bool = False) -> None:
    """``reserve_workspace`` for e4m3-x launches on ``weight`` in their own plans (any row count's)."""
    for rows in (1, MAX_ROWS):
        reserve_workspace(weight, silu, w8a8_plan_for(weight, silu, rows), W8A8_BLOCK_M)


def decode_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    silu: bool = False,
    plan: GemvPlan | None = None,
    out: torch.Tensor | None = None,
    weight_scale: torch.Tensor | None = None,
    x_scale: torch.Tensor | None = None,
    fp8_math: int = 0,
    gelu_tanh: bool = False,
) -> torch.Tensor:
    """``x @ weight.T + bias`` for x [M, K] (1 <= M <= 8), weight [N, K], bias [N]; with ``silu`` the
    weight is a fused gate_up [2I, K] (bias [2I]) and the result ``silu(gate) * up`` [M, I], or with
    ``gelu_tanh`` as well Gemma's ``gelu_tanh(gate) * up`` (GeGLU; same plans: same bytes).

    float16/bfloat16/float32, one dtype for all; last dims contiguous. With ``weight_scale`` (float32,
    one value per weight row) the weight is e4m3 and stands for ``weight * weight_scale[:, None]``.
    With ``x_scale`` (float32, one value per row) x is e4m3 codes too, standing for ``x * x_scale[:, None]``,
    and the dot is taken in e4m3; the result is ``out``'s float dtype (bfloat16 without ``out``).
    ``fp8_math`` picks how an e4m3 weight meets float activations (the kernel's ``FP8_MATH``): 0 widens it
    to x's dtype, 1 widens both to float16 (for benchmarks only: x beyond float16's range would
    overflow there, so the layers never ask for it).
    Returns a new tensor of x's dtype (or fills ``out``). ``plan`` overrides the tile plan
    (benchmarks); a split plan needs the device workspace reserved first (``reserve_workspace``) when
    it runs under CUDA-graph capture.
    """
    _check(x, weight, bias, silu, out, weight_scale, x_scale)
    if gelu_tanh and not silu:
        raise KernelInputError("gelu_tanh is the gated epilogue's activation: it needs silu=True (a gate_up weight)")
    if x_scale is not None:
        math = 2
    elif weight_scale is not None:
        math = fp8_math
        if math not in (0, 1):
            raise KernelInputError(f"fp8_math is 0 or 1 beside float activations, got {fp8_math}")
    else:
        math = 0
    if plan is None and x_scale is not None:
        plan = w8a8_plan_for(weight, silu, x.shape[0])
    return _launch(x, weight, bias, silu, plan_for(weight, silu, plan, x.shape[0]), out, weight_scale=weight_scale,
                   x_scale=x_scale, fp8_math=math, gelu_tanh=gelu_tanh)


def decode_gemv_add_residual(
    x: torch.Tensor,
    weight: torch.Tensor,
    residual: torch.Tensor,
    bias: torch.Tensor | None = None,
    plan: GemvPlan | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h, sums)``: h = ``x @ weight.T + bias`` rounded to x's dtype, plus ``residual`` [M, N] rounded
    again (a projection, then the residual add of the next RMSNorm); ``sums`` [tiles, BLOCK_M] float32
    holds each column tile's sum of squares of h per row (rows past M unwritten), which is all that
    ``decode_gemv_rms_norm`` needs to normalise h. residual is read, never written."""
    n_out = _check(x, weight, bias, False, None)
    if (residual.shape != (x.shape[0], n_out) or residual.dtype != x.dtype or residual.device != x.device
            or residual.stride(-1) != 1):
        raise KernelInputError(f"residual must be [{x.shape[0]}, {n_out}] {x.dtype} on {x.device} with a "
                               f"contiguous last dim, got {tuple(residual.shape)} {residual.dtype}")
    plan = plan_for(weight, False, plan, x.shape[0])
    sums = torch.empty(triton.cdiv(n_out, plan.block_n), BLOCK_M, dtype=torch.float32, device=x.device)
    return _launch(x, weight, bias, False, plan, None, residual=residual, sums=sums), sums


def decode_gemv_rms_norm(
    h: torch.Tensor,
    sums: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    silu: bool = False,
    plan: GemvPlan | None = None,
) -> torch.Tensor:
    """``decode_gemv(rms_norm(h, norm_weight, eps), weight, bias, silu)`` without the norm's own launch:
    h [M, K] and ``sums`` come from ``decode_gemv_add_residual`` (K its N), and each program scales
    its input tiles by the row's reciprocal RMS and the norm weight [K] as the RMSNorm kernel rounds
    them. The sums of squares are added in another order than the norm kernel's, so results may
    differ from the two launches in the last bit."""
    _check(h, weight, bias, silu, None)
    if sums.dim() != 2 or sums.shape[1] != BLOCK_M or sums.dtype != torch.float32 or not sums.is_contiguous():
        raise KernelInputError(f"sums must be contiguous float32 [tiles, {BLOCK_M}], got {tuple(sums.shape)} "
                               f"{sums.dtype}")
    if norm_weight.shape != (h.shape[1],) or norm_weight.dtype != h.dtype or norm_weight.stride(0) != 1:
        raise KernelInputError(f"norm_weight must be contiguous [{h.shape[1]}] {h.dtype}, got "
                               f"{tuple(norm_weight.shape)} {norm_weight.dtype}")
    for name, t in (("sums", sums), ("norm_weight", norm_weight)):
        if t.device != h.device:
            raise KernelInputError(f"{name} is on {t.device}, h on {h.device}")
    return _launch(h, weight, bias, silu, plan_for(weight, silu, plan, h.shape[0]), None, sums=sums,
                   norm_weight=norm_weight, eps=eps)


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool, plan: GemvPlan,
            out: torch.Tensor | None, residual: torch.Tensor | None = None, sums: torch.Tensor | None = None,
            norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            weight_scale: torch.Tensor | None = None, x_scale: torch.Tensor | None = None,
            fp8_math: int = 0, gelu_tanh: bool = False) -> torch.Tensor:
    M, K = x.shape
    n_out = weight.shape[0] // 2 if silu else weight.shape[0]
    if out is None:
        out = torch.empty(M, n_out, dtype=torch.bfloat16 if x_scale is not None else x.dtype, device=x.device)
    if M == 0 or n_out == 0:
        return out
    tiles = triton.cdiv(n_out, plan.block_n)
    per = k_per_split(K, plan)
    block_m = W8A8_BLOCK_M if x_scale is not None else BLOCK_M
    if plan.split_k > 1:
        space = workspace(x.device)
        space.reserve(*workspace_need(weight, silu, plan, block_m))
        partials, tickets = space.partials, space.tickets
    else:
        partials, tickets = out, out  # never read: SPLIT_K == 1 compiles the split path away
    sum_tiles = sums.shape[0] if sums is not None and norm_weight is not None else 0
    pdl = use_pdl(x.device)
    _decode_gemv_kernel[(tiles, plan.split_k)](
        x, weight, bias if bias is not None else weight, out, partials, tickets,
        residual if residual is not None else out, sums if sums is not None else out,
        norm_weight if norm_weight is not None else weight,
        weight_scale if weight_scale is not None else out, x_scale if x_scale is not None else out,
        M, n_out, K, per, sum_tiles, float(eps),
        x.stride(0), weight.stride(0), out.stride(0), residual.stride(0) if residual is not None else 0,
        BLOCK_M=block_m, BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, SPLIT_K=plan.split_k,
        SILU=silu, HAS_BIAS=bias is not None, EVEN_N=n_out % plan.block_n == 0,
        EVEN_K=K % plan.block_k == 0 and per * plan.split_k == K,
        EXACT_FP32=x.dtype == torch.float32, USE_PDL=pdl, ADD_RESIDUAL=residual is not None,
        NORM_INPUT=norm_weight is not None, SQ_TILES_P=max(16, triton.next_power_of_2(max(sum_tiles, 1))),
        W_SCALED=weight_scale is not None, FP8_MATH=fp8_math, GELU_TANH=gelu_tanh,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
        **launch_options(pdl),
    )
    return out


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool,
           out: torch.Tensor | None, weight_scale: torch.Tensor | None = None,
           x_scale: torch.Tensor | None = None) -> int:
    M, K = check_gemv_operands(x, weight, MAX_ROWS, "decode GEMV")
    if x_scale is not None:  # W8A8: e4m3 x with per-row scales beside an e4m3 weight
        if weight_scale is None or x.dtype != torch.float8_e4m3fn:
            raise KernelInputError(f"an x_scale goes with e4m3 x and an e4m3 weight with its weight_scale, got x "
                                   f"{x.dtype}")
        if (x_scale.dtype != torch.float32 or x_scale.numel() != M or not x_scale.is_contiguous()
                or x_scale.device != x.device):
            raise KernelInputError(f"x_scale must be contiguous float32 with one value per row ({M}) on {x.device}, "
                                   f"got {tuple(x_scale.shape)} {x_scale.dtype}")
        if bias is not None:
            raise KernelInputError("an e4m3 x takes no bias")
    x_float = x.dtype in _DTYPES or x_scale is not None
    if weight_scale is not None:
        if not x_float or weight.dtype != torch.float8_e4m3fn:
            raise KernelInputError(f"a scaled weight is e4m3 beside float activations, got {weight.dtype} and {x.dtype}")
        if (weight_scale.dtype != torch.float32 or weight_scale.numel() != weight.shape[0]
                or not weight_scale.is_contiguous() or weight_scale.device != x.device):
            raise KernelInputError(f"weight_scale must be contiguous float32 with one value per weight row "
                                   f"({weight.shape[0]}) on {x.device}, got {tuple(weight_scale.shape)} "
                                   f"{weight_scale.dtype}")
    elif x.dtype not in _DTYPES or weight.dtype != x.dtype:
        raise KernelInputError(f"x and weight must share a float dtype, got {x.dtype} and {weight.dtype}")
    if silu and weight.shape[0] % 2:
        raise KernelInputError(f"a fused gate_up weight has an even number of rows, got {weight.shape[0]}")
    n_out = weight.shape[0] // 2 if silu else weight.shape[0]
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.stride(0) != 1 or bias.dtype != x.dtype):
        raise KernelInputError(f"bias must be contiguous [{weight.shape[0]}] {x.dtype}, got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("out", out)):
        if t is not None and t.device != x.device:
            raise KernelInputError(f"{name} is on {t.device}, x on {x.device}")
    out_dtype = torch.bfloat16 if x_scale is not None else x.dtype
    if x_scale is not None and out is not None and out.dtype in _DTYPES:
        out_dtype = out.dtype
    if out is not None and (out.shape != (M, n_out) or out.dtype != out_dtype or out.stride(-1) != 1):
        raise KernelInputError(f"out must be [{M}, {n_out}] {out_dtype} with a contiguous last dim")
    return n_out
