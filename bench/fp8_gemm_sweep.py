"""The per-channel FP8 GEMM of W8A8 layers (per-token activation scales, per-row weight scales) on the
Llama-3.1-8B projections, from a decode batch to a prefill chunk: ``torch._scaled_mm`` as Ward calls
it, with fast accumulation, and Ward's Triton kernel (``worker.kernels.fp8_gemm.fp8_channel_gemm``)
over a grid of tile plans; with ``--peer`` also vLLM's CUTLASS kernel (``cutlass_scaled_mm``, what its
FP8 layers run on Hopper; the peer's site on PYTHONPATH). At up to 8 rows also the decode GEMV over the
same e4m3 weights with the activations left in bf16 (what Ward's FP8 layers run there: the latency
test's 8 rows and batch 1). Times are CUDA-graph replays over enough
copies of the weight to spill the L2 (the engine reads each layer's weight once a step); one JSON
line per shape and row count with the best Triton plan, and how far each product is from the
precise ``torch._scaled_mm``.

Usage (GPU, repository root on PYTHONPATH): python bench/fp8_gemm_sweep.py [--rows 8,16,64,128,256,512,2048]
[--peer] [--no-triton]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math

import torch

from worker.kernels.decode_gemv import decode_gemv
from worker.kernels.decode_gemv_config import MAX_ROWS
from worker.kernels.fp8_gemm import fp8_channel_gemm
from worker.kernels.fp8_quant import quantize_fp8_groups
from worker.model.quant.linear import quantize_fp8_per_channel

from worker.tuning.graph_timing import timed_us

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}  # (K, N)
SPILL_BYTES = 150 * 2**20  # three times an H100's or H200's L2


def plans_for(m: int) -> list[tuple[int, int, int, int, int]]:
    """(block_m, block_n, block_k, warps, stages): tiles no taller than the rows need."""
    heights = [h for h in (16, 32, 64, 128) if h <= max(16, 2 * m)][-2:]
    return [(bm, bn, 128, w, st) for bm, bn, w, st in itertools.product(heights, (64, 128, 256), (4, 8), (3, 4, 5))]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def peer_gemm():
    """vLLM's ``cutlass_scaled_mm`` (a [M, K] e4m3, b [K, N] column-major, per-token and per-channel
    scales), or None where the peer's site is not importable."""
    try:
        from vllm import _custom_ops
    except ImportError:
        return None
    return _custom_ops.cutlass_scaled_mm


def shape_row(name: str, K: int, N: int, m: int, peer=None, triton_plans: bool = True) -> dict:
    dev = torch.device("cuda")
    q, scale = quantize_fp8_per_channel(torch.randn(N, K, dtype=torch.bfloat16, device=dev) * 0.05)
    copies = [q] + [q.clone() for _ in range(max(0, math.ceil(SPILL_BYTES / q.numel()) - 1))]
    xq, xs = quantize_fp8_groups(torch.randn(m, K, dtype=torch.bfloat16, device=dev))
    scale_b = scale.reshape(1, -1)

    def scaled_mm(w, fast: bool) -> torch.Tensor:
        return torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=scale_b, out_dtype=torch.bfloat16, use_fast_accum=fast)

    def per_call(fn) -> float:
        return round(timed_us(lambda: [fn(w) for w in copies], iters=10) / len(copies), 2)

    want = scaled_mm(q, False)
    row = {"shape": name, "rows": m, "device": torch.cuda.get_device_name(0), "weight_copies": len(copies),
           "scaled_mm_us": per_call(lambda w: scaled_mm(w, False)),
           "scaled_mm_fast_accum_us": per_call(lambda w: scaled_mm(w, True)),
           "fast_accum_max_rel_diff": rel(scaled_mm(q, True), want)}
    if m <= MAX_ROWS:
        x = torch.randn(m, K, dtype=torch.bfloat16, device=dev)
        row_scales = scale.reshape(-1).contiguous()
        want_gemv = x.float() @ (q.float() * scale).t()
        got = decode_gemv(x, q, weight_scale=row_scales)  # also reserves a split plan's workspace before capture
        row.update(gemv_bf16_activations_us=per_call(lambda w: decode_gemv(x, w, weight_scale=row_scales)),
                   gemv_max_rel_diff_from_float=rel(got, want_gemv))
    if peer is not None:
        scale_col = scale.reshape(-1, 1).contiguous()
        row.update(peer_cutlass_us=per_call(lambda w: peer(xq, w.t(), xs, scale_col, torch.bfloat16)),
                   peer_cutlass_max_rel_diff=rel(peer(xq, q.t(), xs, scale_col, torch.bfloat16), want))
    best = None
    for plan in plans_for(m) if triton_plans else []:
        try:
            got = fp8_channel_gemm(xq, xs, q, scale, torch.bfloat16, plan)
            us = per_call(lambda w: fp8_channel_gemm(xq, xs, w, scale, torch.bfloat16, plan))
        except Exception as e:  # a plan beyond the card's shared memory or registers
            if "OutOfResources" not in type(e).__name__ and "out of resource" not in str(e):
                raise
            continue
        if best is None or us < best[0]:
            best = (us, plan, rel(got, want))
    if best is not None:
        row.update(triton_us=best[0], triton_plan=list(best[1]), triton_max_rel_diff=best[2])
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="16,64,128,256,512,2048", help="row counts, comma-separated")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="of " + ", ".join(SHAPES))
    parser.add_argument("--peer", action="store_true", help="also vLLM's cutlass_scaled_mm (its site on PYTHONPATH)")
    parser.add_argument("--no-triton", action="store_true", help="leave out Ward's Triton kernel's plan grid")
    args = parser.parse_args()
    peer = peer_gemm() if args.peer else None
    if args.peer and peer is None:
        raise SystemExit("--peer: vllm is not importable (put the peer's site on PYTHONPATH)")
    for m in (int(r) for r in args.rows.split(",")):
        for name in args.shapes.split(","):
            K, N = SHAPES[name]
            print(json.dumps(shape_row(name, K, N, m, peer, not args.no_triton)), flush=True)


if __name__ == "__main__":
    main()
