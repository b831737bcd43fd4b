"""Gated activations on a fused gate_up projection: silu(gate) * up (the Llama MLP) and
gelu_tanh(gate) * up (Gemma's GeGLU)."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from worker.kernels.errors import KernelInputError
from worker.kernels.fp8_quant import e4m3_codes, e4m3_scale

BLOCK = 1024
# A SiLU-and-quantize row at most this wide (padded to a power of two) is held in registers and read
# once; wider rows take two passes (the second reads the row again). One pass reads half the bytes:
# at 8,192 x 14,336 (a prefill chunk of Llama-3.1-8B) the two passes took 11% of an FP8 prefill step
# on an H100 (2026-12-07), about twice what its bytes need.
ONE_PASS_MAX = 16384


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, INTERMEDIATE: tl.constexpr, BLOCK: tl.constexpr,
                         GELU_TANH: tl.constexpr = False):
    """Grid (T, cdiv(I, BLOCK)): one program per BLOCK columns of one row. ``GELU_TANH``: Gemma's
    tanh-approximated GELU in place of SiLU."""
    row = tl.program_id(0).to(tl.int64)
    c0 = tl.program_id(1) * BLOCK
    cols = c0 + tl.arange(0, BLOCK)
    if GELU_TANH:
        out = _gelu_tanh_mul_block(x_ptr + row * stride_x, c0, INTERMEDIATE, BLOCK)
    else:
        out = _silu_mul_block(x_ptr + row * stride_x, c0, INTERMEDIATE, BLOCK)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=cols < INTERMEDIATE)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x[..., :I]) * x[..., I:]`` for x [..., 2 * I] (float16/bfloat16/float32, contiguous last dim).

    Returns a new [..., I] tensor of x's dtype, or fills ``out`` of that shape and dtype.
    """
    return _gated(x, out, gelu_tanh=False)


def gelu_tanh_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``gelu(x[..., :I], approximate="tanh") * x[..., I:]`` (Gemma's GeGLU), as ``silu_and_mul``
    takes and returns: one launch where the torch expression makes several."""
    return _gated(x, out, gelu_tanh=True)


def _gated(x: torch.Tensor, out: torch.Tensor | None, gelu_tanh: bool) -> torch.Tensor:
    if x.dim() < 1 or x.shape[-1] % 2 or x.stride(-1) != 1:
        raise KernelInputError(f"x must be [..., 2 * I] with a contiguous last dim, got {tuple(x.shape)}")
    intermediate = x.shape[-1] // 2
    shape = (*x.shape[:-1], intermediate)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    elif out.shape != shape or out.dtype != x.dtype or out.stride(-1) != 1 or out.device != x.device:
        raise KernelInputError(f"out must be {shape} {x.dtype} on {x.device} with a contiguous last dim")
    try:
        x2, out2 = x.view(-1, x.shape[-1]), out.view(-1, intermediate)
    except RuntimeError as err:
        raise KernelInputError("x and out rows must be viewable as 2-D (uniform row stride)") from err
    if x2.shape[0] == 0 or intermediate == 0:
        return out
    grid = (x2.shape[0], triton.cdiv(intermediate, BLOCK))
    _silu_and_mul_kernel[grid](
        x2, out2, x2.stride(0), out2.stride(0), INTERMEDIATE=intermediate, BLOCK=BLOCK, GELU_TANH=gelu_tanh,
        num_warps=4,
    )
    return out


@triton.jit
def _silu_and_mul_fp8_kernel(x_ptr, q_ptr, s_ptr, stride_x, stride_q, INTERMEDIATE: tl.constexpr,
                             BLOCK: tl.constexpr, ONE_PASS: tl.constexpr = False):
    """Grid (T,): one program per row, two passes over it (the amax, then the codes; the second
    reads the row again, mostly from L2) so no [T, I] product is written in between. With
    ``ONE_PASS`` (BLOCK >= INTERMEDIATE) the row's product is held in registers between the two."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    if ONE_PASS:
        product = _silu_mul_block(x_row, 0, INTERMEDIATE, BLOCK)
        scale = e4m3_scale(tl.max(tl.abs(product), axis=0))
        cols = tl.arange(0, BLOCK)
        tl.store(q_ptr + row * stride_q + cols, e4m3_codes(product, scale, q_ptr.dtype.element_ty),
                 mask=cols < INTERMEDIATE)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for c0 in range(0, INTERMEDIATE, BLOCK):
            amax = tl.maximum(amax, tl.abs(_silu_mul_block(x_row, c0, INTERMEDIATE, BLOCK)))
        scale = e4m3_scale(tl.max(amax, axis=0))
        for c0 in range(0, INTERMEDIATE, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            codes = e4m3_codes(_silu_mul_block(x_row, c0, INTERMEDIATE, BLOCK), scale, q_ptr.dtype.element_ty)
            tl.store(q_ptr + row * stride_q + cols, codes, mask=cols < INTERMEDIATE)
    tl.store(s_ptr + row, scale)


@triton.jit
def silu_f32(gate):
    """SiLU of a float32 tile, in float32."""
    return gate / (1.0 + tl.exp(-gate))


@triton.jit
def gelu_tanh_f32(gate):
    """Gemma's tanh-approximated GELU of a float32 tile, in float32. 0.5 * (1 + tanh(z)) is computed
    as sigmoid(2z): the same value without tanh's cancellation near 0."""
    z = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)  # sqrt(2 / pi) * (x + 0.044715 x^3)
    return gate / (1.0 + tl.exp(-2.0 * z))


@triton.jit
def _silu_mul_block(x_row, c0, INTERMEDIATE: tl.constexpr, BLOCK: tl.constexpr):
    """``silu(gate) * up`` of columns [c0, c0 + BLOCK) of one row, rounded as torch's ``F.silu(gate) *
    up`` in the activations' dtype (silu first, then the product), as float32 (0 past the row's end)."""
    cols = c0 + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + INTERMEDIATE + cols, mask=mask, other=0.0)
    activated = silu_f32(gate).to(up.dtype).to(tl.float32)
    return (activated * up.to(tl.float32)).to(up.dtype).to(tl.float32)


@triton.jit
def _gelu_tanh_mul_block(x_row, c0, INTERMEDIATE: tl.constexpr, BLOCK: tl.constexpr):
    """``gelu_tanh(gate) * up`` of columns [c0, c0 + BLOCK) of one row, rounded as torch's
    ``F.gelu(gate, approximate="tanh") * up`` (the GELU in float32, rounded to the activations' dtype,
    then the product), as float32."""
    cols = c0 + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE
    gate = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_row + INTERMEDIATE + cols, mask=mask, other=0.0)
    activated = gelu_tanh_f32(gate).to(up.dtype).to(tl.float32)
    return (activated * up.to(tl.float32)).to(up.dtype).to(tl.float32)


def silu_fp8_one_pass() -> bool:
    """``WARD_SILU_FP8_ONE_PASS``: 1 or unset, rows up to ``ONE_PASS_MAX`` wide read once (the FP8
    model's throughput rows 1.6-3.5% faster on an H100, both rounds); 0, twice."""
    value = os.environ.get("WARD_SILU_FP8_ONE_PASS", "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"WARD_SILU_FP8_ONE_PASS must be 0 or 1, got {value!r}")
    return value == "1"


SILU_FP8_ONE_PASS = silu_fp8_one_pass()


def silu_and_mul_fp8(x: torch.Tensor, one_pass: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of a W8A8 down projection in one launch: ``silu_and_mul(x)`` in x's dtype, quantized
    to e4m3 per row with a dynamic scale, as ``silu_and_mul`` followed by
    ``worker.kernels.fp8_quant.quantize_fp8_groups`` would give it.

    x: [T, 2 * I] with a contiguous last dim. Returns (codes e4m3 [T, I], scales float32 [T, 1]).
    ``one_pass`` (None: ``WARD_SILU_FP8_ONE_PASS``): read a row of at most ``ONE_PASS_MAX`` once
    rather than twice; the same bits either way (the amax is a maximum, in any order)."""
    if x.dim() != 2 or x.shape[-1] % 2 or x.stride(-1) != 1:
        raise KernelInputError(f"x must be [T, 2 * I] with a contiguous last dim, got {tuple(x.shape)}")
    rows, intermediate = x.shape[0], x.shape[1] // 2
    codes = torch.empty(rows, intermediate, dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    if rows and intermediate:
        row_block = triton.next_power_of_2(intermediate)
        if (SILU_FP8_ONE_PASS if one_pass is None else one_pass) and row_block <= ONE_PASS_MAX:
            # 32 values a thread at the widest: 16 warps for a 16,384-wide row
            warps = max(4, min(16, row_block // 1024))
            _silu_and_mul_fp8_kernel[(rows,)](x, codes, scales, x.stride(0), codes.stride(0),
                                              INTERMEDIATE=intermediate, BLOCK=row_block, ONE_PASS=True,
                                              num_warps=warps)
        else:
            _silu_and_mul_fp8_kernel[(rows,)](x, codes, scales, x.stride(0), codes.stride(0),
                                              INTERMEDIATE=intermediate, BLOCK=BLOCK, num_warps=4)
    elif rows:
        scales.fill_(1e-12)
    return codes, scales
