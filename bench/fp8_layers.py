"""FP8 projections of the Llama-3.1-8B shape, one layer at a time, from batch 1 to a prefill chunk:
cuBLAS bf16 against the W8A8 path (per-token activation quantization, then ``torch._scaled_mm``)
with the quantization as torch operations and as Ward's one kernel (``worker.kernels.fp8_quant``),
the quantization alone both ways, and up to 8 rows the decode GEMV over the e4m3 weights (what
decode steps run). Times are CUDA-graph
replays (``graph_timing.timed_us``); one JSON line per shape and row count.

Usage (GPU, repository root on PYTHONPATH): python bench/fp8_layers.py [--rows 1,8,256,2048]
"""
from __future__ import annotations

import argparse
import json

import torch

from worker.kernels.decode_gemv import decode_gemv
from worker.kernels.decode_gemv_config import MAX_ROWS
from worker.kernels.fp8_quant import quantize_fp8_groups
from worker.model.quant.linear import quantize_fp8_per_channel, quantize_fp8_per_token

from worker.tuning.graph_timing import timed_us

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}  # (K, N)


def layer_row(name: str, K: int, N: int, m: int) -> dict:
    dev = torch.device("cuda")
    w = torch.randn(N, K, dtype=torch.bfloat16, device=dev) * 0.05
    q, scale = quantize_fp8_per_channel(w)
    scale_b = scale.reshape(1, -1)
    x = torch.randn(m, K, dtype=torch.bfloat16, device=dev)

    def w8a8(quantize) -> torch.Tensor:
        xq, xs = quantize(x)
        return torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=scale_b, out_dtype=x.dtype)

    want = w8a8(quantize_fp8_per_token)
    got = w8a8(quantize_fp8_groups)
    row = {"shape": name, "rows": m, "device": torch.cuda.get_device_name(0),
           "bf16_us": round(timed_us(lambda: torch.nn.functional.linear(x, w)), 1),
           "w8a8_torch_quant_us": round(timed_us(lambda: w8a8(quantize_fp8_per_token)), 1),
           "w8a8_kernel_quant_us": round(timed_us(lambda: w8a8(quantize_fp8_groups)), 1),
           "quant_torch_us": round(timed_us(lambda: quantize_fp8_per_token(x)), 1),
           "quant_kernel_us": round(timed_us(lambda: quantize_fp8_groups(x)), 1),
           # the quantized operands are the same bits (tests/test_quant_kernels.py); this is the products' gap
           "paths_max_rel_diff": float((got.float() - want.float()).abs().max() / want.float().abs().max())}
    if m <= MAX_ROWS:
        row_scales = scale.reshape(-1)
        row["decode_gemv_us"] = round(timed_us(lambda: decode_gemv(x, q, None, weight_scale=row_scales)), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1,8,256,2048", help="row counts, comma-separated")
    args = parser.parse_args()
    for m in (int(r) for r in args.rows.split(",")):
        for name, (K, N) in SHAPES.items():
            print(json.dumps(layer_row(name, K, N, m)), flush=True)


if __name__ == "__main__":
    main()
