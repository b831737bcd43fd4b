"""RMSNorm and residual-add + RMSNorm, with Hugging Face Llama's rounding.

Hugging Face computes ``weight * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype)``; the residual add
before it happens in the activations' dtype. These kernels round at the same places, so on the same
inputs they differ from the torch ops only by the last-bit effects of a different summation order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.attention_config import next_power_of_2
from worker.kernels.errors import KernelInputError
from worker.kernels.fp8_quant import e4m3_codes, e4m3_scale
from worker.kernels.pdl import launch_options, use_pdl

MAX_HIDDEN = 65536  # one row is held in registers; wider rows are not a Llama shape


@triton.jit
def scaled_rms(xf, rstd, weight, like, ADDS_ONE: tl.constexpr):
    """Float32 values ``xf`` normalised by ``rstd`` and scaled by the norm's weight, rounded as these
    kernels round them (before the final cast to ``like``'s dtype): RMSNorm ``(x * rstd).to(dtype) *
    w``; with ``ADDS_ONE`` Gemma's ``x * rstd * (1 + w)``, all in float32."""
    if ADDS_ONE:
        return xf * rstd * (1.0 + weight.to(tl.float32))
    return (xf * rstd).to(like.dtype).to(tl.float32) * weight.to(tl.float32)


@triton.jit
def _x_row_offset(row, stride_x, stride_x_head, HEADS: tl.constexpr):
    """Where row ``row`` of x starts: rows of a [N, H] tensor, or with HEADS > 1 the heads of a
    [T, HEADS, H] view (token row // HEADS, head row % HEADS)."""
    if HEADS == 1:
        return row * stride_x
    return (row // HEADS) * stride_x + (row % HEADS) * stride_x_head


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    scale_ptr,
    stride_x,
    stride_residual,
    stride_out,
    stride_residual_out,
    eps,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
    ADD_RESIDUAL: tl.constexpr,
    USE_PDL: tl.constexpr = False,
    QUANT_FP8: tl.constexpr = False,
    HEADS: tl.constexpr = 1,
    stride_x_head=0,
):
    """One program per row; reads the whole row, so ``out`` and ``residual_out`` may alias the inputs.
    With ``USE_PDL`` the norm's weight is read before waiting for the kernel that wrote x (pdl.py).
    With ``QUANT_FP8`` the normed row, rounded to x's dtype as the plain norm stores it, is quantized
    to e4m3 with its own scale (``fp8_quant``'s arithmetic): ``out`` takes the codes, ``scale_ptr``
    the row's scale. ``HEADS`` > 1: x is [T, HEADS, HIDDEN] with strides (stride_x, stride_x_head, 1),
    a per-head view of a fused qkv output (q/k norms), read in place; row r is token r // HEADS."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    x = tl.load(x_ptr + _x_row_offset(row, stride_x, stride_x_head, HEADS) + offs, mask=mask, other=0.0)
    if ADD_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_residual + offs, mask=mask, other=0.0)
        # Rounded to the sum's dtype, as a torch add of the two tensors would be.
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_residual_out + offs, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / HIDDEN
    out = scaled_rms(xf, tl.math.rsqrt(variance + eps), weight, x, False)
    if QUANT_FP8:
        rounded = out.to(x.dtype).to(tl.float32)
        scale = e4m3_scale(tl.max(tl.abs(rounded), axis=0))
        tl.store(out_ptr + row * stride_out + offs, e4m3_codes(rounded, scale, out_ptr.dtype.element_ty), mask=mask)
        tl.store(scale_ptr + row, scale)
    else:
        tl.store(out_ptr + row * stride_out + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``weight * rmsnorm(x)`` over the last dimension.

    x: [..., H] float16/bfloat16/float32 with a contiguous last dim (rows viewable as [N, H], or a
    [T, heads, H] per-head view, read in place); weight: [H].
    Returns a new tensor (or fills ``out``, which may be ``x`` itself) of dtype
    ``torch.promote_types(x.dtype, weight.dtype)`` and x's shape.
    """
    hidden = _check_row_input(x, weight)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = _output_like(x, out_dtype, out, "out")
    _launch(x, out, weight, out, out, eps, hidden, add_residual=False)
    return out


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``residual_out = x + residual``; ``normed = weight * rmsnorm(residual_out)``. Inputs are not modified.

    x, residual: [..., H] with the same shape; weight: [H]. ``residual_out`` has the dtype of
    ``x + residual`` and ``normed`` the dtype of ``weight * residual_out``. Returns (normed, residual_out).
    """
    hidden = _check_row_input(x, weight)
    _check_residual(x, residual)
    sum_dtype = torch.promote_types(x.dtype, residual.dtype)
    residual_out = torch.empty(x.shape, dtype=sum_dtype, device=x.device)
    normed = torch.empty(x.shape, dtype=torch.promote_types(sum_dtype, weight.dtype), device=x.device)
    _launch(x, residual, weight, normed, residual_out, eps, hidden, add_residual=True)
    return normed, residual_out


def fused_add_rms_norm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """In-place ``fused_add_rms_norm``: ``residual`` becomes ``x + residual`` and ``x`` its normed value.

    Needs x, residual and weight of one dtype (so both results fit where they are stored).
    """
    hidden = _check_row_input(x, weight)
    _check_residual(x, residual)
    if not (x.dtype == residual.dtype == weight.dtype):
        raise KernelInputError(
            f"in-place fused_add_rms_norm_ needs one dtype, got x {x.dtype}, residual {residual.dtype}, "
            f"weight {weight.dtype}"
        )
    _launch(x, residual, weight, x, residual, eps, hidden, add_residual=True)


def rms_norm_fp8(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The input of a W8A8 projection in one launch: ``weight * rmsnorm(x + residual)`` (no residual
    given: of x) rounded to x's dtype, then quantized to e4m3 per row with a dynamic scale, as
    ``fused_add_rms_norm`` followed by ``worker.kernels.fp8_quant.quantize_fp8_groups`` would give it.

    x, residual: [T, H] of one float dtype, weight [H] of that dtype too. Returns (codes e4m3 [T, H],
    scales float32 [T, 1], the residual sum, which is x itself when no residual is given)."""
    hidden = _check_row_input(x, weight)
    if x.dim() != 2:
        raise KernelInputError(f"rms_norm_fp8 takes [T, H] rows, got shape {tuple(x.shape)}")
    if residual is not None:
        _check_residual(x, residual)
    dtypes = {x.dtype, weight.dtype} | ({residual.dtype} if residual is not None else set())
    if len(dtypes) != 1:
        raise KernelInputError(f"rms_norm_fp8 needs one dtype for x, residual and weight, got {sorted(map(str, dtypes))}")
    codes = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty(x.shape[0], 1, dtype=torch.float32, device=x.device)
    if residual is None:
        _launch(x, x, weight, codes, x, eps, hidden, add_residual=False, scales=scales)
        return codes, scales, x
    residual_out = torch.empty_like(x)
    _launch(x, residual, weight, codes, residual_out, eps, hidden, add_residual=True, scales=scales)
    return codes, scales, residual_out


def _check_row_input(x: torch.Tensor, weight: torch.Tensor) -> int:
    if x.dim() < 1 or x.stride(-1) != 1:
        raise KernelInputError("x must have a contiguous last dimension")
    hidden = x.shape[-1]
    if weight.shape != (hidden,) or weight.stride(0) != 1:
        raise KernelInputError(f"weight must be contiguous [{hidden}], got {tuple(weight.shape)}")
    if hidden > MAX_HIDDEN:
        raise KernelInputError(f"hidden size {hidden} exceeds {MAX_HIDDEN}")
    if weight.device != x.device:
        raise KernelInputError(f"weight is on {weight.device}, x on {x.device}")
    return hidden


def _check_residual(x: torch.Tensor, residual: torch.Tensor) -> None:
    if residual.shape != x.shape or residual.stride(-1) != 1 or residual.device != x.device:
        raise KernelInputError(f"residual must match x {tuple(x.shape)} with a contiguous last dimension")


def _output_like(x: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None, name: str) -> torch.Tensor:
    if out is None:
        return torch.empty(x.shape, dtype=dtype, device=x.device)
    if out.shape != x.shape or out.dtype != dtype or out.stride(-1) != 1 or out.device != x.device:
        raise KernelInputError(f"{name} must be {tuple(x.shape)} {dtype} on {x.device} with a contiguous last dim")
    return out


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[N, H] view of a [..., H] tensor (a view, so in-place writes land in ``t``)."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError as err:
        raise KernelInputError("tensor rows must be viewable as [N, H] (uniform row stride)") from err


def _row_launch(x, residual, out, residual_out, hidden: int):
    """(the four tensors as [N, H] row views, N, the launch options: block, PDL, warps, heads) of a
    one-program-per-row launch; x stays a [T, heads, H] view where its rows are not evenly spaced (a
    per-head slice of a fused qkv output, read in place). None when there are no rows."""
    heads, head_stride = 1, 0
    if _uneven_heads(x):
        heads, head_stride = x.shape[1], x.stride(1)
        x2 = x
    else:
        x2 = _rows(x)
    views = (x2, *(_rows(t) for t in (residual, out, residual_out)))
    rows = views[2].shape[0]
    if rows == 0:
        return None
    block = next_power_of_2(hidden)
    pdl = use_pdl(x.device)
    return views, rows, dict(HIDDEN=hidden, BLOCK=block, USE_PDL=pdl, HEADS=heads, stride_x_head=head_stride,
                             num_warps=min(max(block // 512, 1), 16), **launch_options(pdl))


def _uneven_heads(t: torch.Tensor) -> bool:
    """A [T, heads, H] tensor whose heads cannot be viewed as evenly spaced [T * heads, H] rows."""
    return t.dim() == 3 and t.shape[0] > 1 and t.shape[1] > 1 and t.stride(0) != t.shape[1] * t.stride(1)


def _launch(x, residual, weight, out, residual_out, eps: float, hidden: int, add_residual: bool,
            scales: torch.Tensor | None = None) -> None:
    """``scales`` given: ``out`` takes e4m3 codes and ``scales`` [rows, 1] their per-row scales."""
    launch = _row_launch(x, residual, out, residual_out, hidden)
    if launch is None:
        return
    (x2, r2, o2, ro2), rows, options = launch
    _rms_norm_kernel[(rows,)](
        x2, r2, weight, o2, ro2, o2 if scales is None else scales,
        x2.stride(0), r2.stride(0), o2.stride(0), ro2.stride(0), eps,
        ADD_RESIDUAL=add_residual, QUANT_FP8=scales is not None, **options,
    )


# -- Gemma: x / rms(x) * (1 + weight), all in float32 and cast once; sandwich norms around each block --


@triton.jit
def _gemma_normed(xf, weight, eps, HIDDEN: tl.constexpr):
    """Gemma's RMSNorm of a float32 row (0 past its end): ``x * rsqrt(mean(x²) + eps) * (1 + w)``
    in float32, as transformers computes it before the one cast."""
    variance = tl.sum(xf * xf, axis=0) / HIDDEN
    return scaled_rms(xf, tl.math.rsqrt(variance + eps), weight, xf, True)


@triton.jit
def _gemma_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, next_weight_ptr, out_ptr, residual_out_ptr,
    stride_x, stride_residual, stride_out, stride_residual_out, eps,
    HIDDEN: tl.constexpr, BLOCK: tl.constexpr, ADD_TO_RESIDUAL: tl.constexpr, NORM_AGAIN: tl.constexpr,
    USE_PDL: tl.constexpr = False, HEADS: tl.constexpr = 1, stride_x_head=0,
):
    """One program per row. Plain: ``out = norm(x)``. ``ADD_TO_RESIDUAL``: ``residual_out = residual +
    norm(x)`` (the norm cast to the activations' dtype, then the add rounded as a torch add), and
    with ``NORM_AGAIN`` also ``out = norm'(residual_out)`` with ``next_weight``: a Gemma layer's
    post-attention norm, residual add and pre-feedforward norm in one launch. ``HEADS``: as in
    ``_rms_norm_kernel`` (Gemma 3's q/k norms)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < HIDDEN
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0)
    if NORM_AGAIN:
        next_weight = tl.load(next_weight_ptr + offs, mask=mask, other=0.0)
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    x = tl.load(x_ptr + _x_row_offset(row, stride_x, stride_x_head, HEADS) + offs, mask=mask, other=0.0)
    dtype = out_ptr.dtype.element_ty
    y = _gemma_normed(x.to(tl.float32), weight, eps, HIDDEN).to(dtype)
    if ADD_TO_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_residual + offs, mask=mask, other=0.0)
        y = (residual.to(tl.float32) + y.to(tl.float32)).to(dtype)
        tl.store(residual_out_ptr + row * stride_residual_out + offs, y, mask=mask)
        if NORM_AGAIN:
            y = _gemma_normed(y.to(tl.float32), next_weight, eps, HIDDEN).to(dtype)
            tl.store(out_ptr + row * stride_out + offs, y, mask=mask)
    else:
        tl.store(out_ptr + row * stride_out + offs, y, mask=mask)


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma's RMSNorm over the last dimension: ``x / rms(x) * (1 + weight)`` in float32, cast to x's
    dtype (a new contiguous tensor). x: [..., H] with a contiguous last dim, rows viewable as [N, H]
    or a [T, heads, H] per-head view; weight: [H]."""
    hidden = _check_row_input(x, weight)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch_gemma(x, out, weight, weight, out, out, eps, hidden, add_to_residual=False, norm_again=False)
    return out


def gemma_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       next_weight: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A Gemma sandwich norm and its residual add in one launch: ``residual_out = residual +
    gemma_rms_norm(x, weight)``, and with ``next_weight`` also ``gemma_rms_norm(residual_out,
    next_weight)``, the next block's input. x, residual: [T, H] of one dtype; weights [H]. Returns
    (that next input or None, residual_out). Inputs are not modified."""
    hidden = _check_row_input(x, weight)
    _check_residual(x, residual)
    if next_weight is not None and (next_weight.shape != weight.shape or next_weight.stride(0) != 1
                                    or next_weight.device != x.device):
        raise KernelInputError(f"next_weight must be contiguous [{hidden}] on {x.device}")
    if residual.dtype != x.dtype:
        raise KernelInputError(f"x and residual must share a dtype, got {x.dtype} and {residual.dtype}")
    residual_out = torch.empty_like(x, memory_format=torch.contiguous_format)
    normed = torch.empty_like(residual_out) if next_weight is not None else None
    _launch_gemma(x, residual, weight, weight if next_weight is None else next_weight,
                  residual_out if normed is None else normed, residual_out, eps, hidden,
                  add_to_residual=True, norm_again=next_weight is not None)
    return normed, residual_out


def _launch_gemma(x, residual, weight, next_weight, out, residual_out, eps: float, hidden: int,
                  add_to_residual: bool, norm_again: bool) -> None:
    launch = _row_launch(x, residual, out, residual_out, hidden)
    if launch is None:
        return
    (x2, r2, o2, ro2), rows, options = launch
    _gemma_norm_kernel[(rows,)](
        x2, r2, weight, next_weight, o2, ro2, x2.stride(0), r2.stride(0), o2.stride(0), ro2.stride(0), eps,
        ADD_TO_RESIDUAL=add_to_residual, NORM_AGAIN=norm_again, **options,
    )
