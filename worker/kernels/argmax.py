"""Greedy sampling's argmax over the vocabulary, spread over the card.

``torch.argmax`` reduces a decode step's one row of 128K logits in very few blocks: on an H100 it took
27 us a step at batch 1 (docs/performance.md, 2026-12-06), where reading the row's 0.5 MB at the
card's bandwidth takes about 0.2 us. Here each program takes one chunk of one row (its largest value and the first index holding
it), then one program per row picks among the chunks in order. The result is ``torch.argmax``'s: the
first index of the largest value, with NaN counted as larger than every number (a row with a NaN
and an earlier +inf gives the +inf's index where torch would give the NaN's; both mark a broken model).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels.errors import KernelInputError

CHUNK = 4096  # logits per program: 8 KB of bfloat16, 32 programs a row at a 128K vocabulary
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _chunk_argmax_kernel(x_ptr, value_ptr, index_ptr, V, stride_x, num_chunks, CHUNK: tl.constexpr):
    """Grid (rows, num_chunks): the largest value of one chunk of one row and the first index holding it."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    valid = offs < V
    v = tl.load(x_ptr + row * stride_x + offs, mask=valid, other=float("-inf")).to(tl.float32)
    v = tl.where(v != v, float("inf"), v)  # NaN above every number
    best = tl.max(v, axis=0)
    first = tl.min(tl.where((v == best) & valid, offs, 2147483647), axis=0)
    tl.store(value_ptr + row * num_chunks + chunk, best)
    tl.store(index_ptr + row * num_chunks + chunk, first)


@triton.jit
def _pick_chunk_kernel(value_ptr, index_ptr, out_ptr, num_chunks, CHUNKS_P: tl.constexpr):
    """Grid (rows,): the chunk with the largest value, the first such chunk on a tie (lower indices)."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, CHUNKS_P)
    valid = c < num_chunks
    values = tl.load(value_ptr + row * num_chunks + c, mask=valid, other=float("-inf"))
    indices = tl.load(index_ptr + row * num_chunks + c, mask=valid, other=2147483647)
    best = tl.max(values, axis=0)
    tl.store(out_ptr + row, tl.min(tl.where((values == best) & valid, indices, 2147483647), axis=0).to(tl.int64))


def greedy_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)`` of [rows, V] float16/bfloat16/float32 logits (last dim contiguous) as
    int64 [rows]; two launches, no host synchronisation."""
    if logits.dim() != 2 or logits.dtype not in _DTYPES or logits.stride(-1) != 1:
        raise KernelInputError(f"logits must be [rows, V] float with a contiguous last dim, got "
                               f"{tuple(logits.shape)} {logits.dtype}")
    rows, vocab = logits.shape
    if vocab == 0 or vocab >= 2**31 - CHUNK:
        raise KernelInputError(f"the vocabulary must hold 1 to 2**31 - {CHUNK} entries, got {vocab}")
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    num_chunks = triton.cdiv(vocab, CHUNK)
    values = torch.empty(rows, num_chunks, dtype=torch.float32, device=logits.device)
    indices = torch.empty(rows, num_chunks, dtype=torch.int32, device=logits.device)
    _chunk_argmax_kernel[(rows, num_chunks)](logits, values, indices, vocab, logits.stride(0), num_chunks,
                                             CHUNK=CHUNK, num_warps=8)
    _pick_chunk_kernel[(rows,)](values, indices, out, num_chunks, CHUNKS_P=max(16, triton.next_power_of_2(num_chunks)),
                                num_warps=1)
    return out
