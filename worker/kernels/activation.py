"""Gated activation of the Llama MLP: silu(gate) * up on a fused gate_up projection."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.errors import KernelInputError

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, INTERMEDIATE: tl.constexpr, BLOCK: tl.constexpr):
    """Grid (T, cdiv(I, BLOCK)): one program per BLOCK columns of one row."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + INTERMEDIATE + cols, mask=mask, other=0.0)
    dtype = up.dtype
    # Round like torch's F.silu(gate) * up in the activations' dtype: silu first, then the product.
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    out = activated * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(x[..., :I]) * x[..., I:]`` for x [..., 2 * I] (float16/bfloat16/float32, contiguous last dim).

    Returns a new [..., I] tensor of x's dtype, or fills ``out`` of that shape and dtype.
    """
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
        x2, out2, x2.stride(0), out2.stride(0), INTERMEDIATE=intermediate, BLOCK=BLOCK, num_warps=4
    )
    return out
