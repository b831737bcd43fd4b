"""Decode-sized INT4 matmuls (M = 1 and 4 rows) of the Llama-3.1-8B and 70B projections:
Ward's ``int4_matmul`` (and any earlier versions of the module given as files) against cuBLAS bf16
on the same shapes, with the bandwidth each reaches (packed weight, scales and zeros read once);
then a sweep of the INT4 GEMV's tile plan on the 8B shapes at batch 1. One JSON line per figure.

Usage: python bench/int4_gemv.py [--variant NAME=path/to/int4_gemm.py ...] [--no-sweep]
"""
from __future__ import annotations

import argparse
import importlib.util
import json

import torch
import triton

from worker.kernels import int4_gemm

from worker.tuning.graph_timing import timed_us

SHAPES = {  # name: (K, N) of y = x @ W
    "8b.qkv": (4096, 6144), "8b.o": (4096, 4096), "8b.gate_up": (4096, 28672), "8b.down": (14336, 4096),
    "70b.qkv": (8192, 10240), "70b.o": (8192, 8192), "70b.gate_up": (8192, 57344), "70b.down": (28672, 8192),
}
GROUP = 128


def load_variant(path: str):
    spec = importlib.util.spec_from_file_location(f"int4_variant_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def operands(K: int, N: int, dev):
    qweight = torch.randint(-2**31, 2**31 - 1, (K // 8, N), dtype=torch.int32, device=dev)
    scales = (torch.rand(K // GROUP, N, device=dev) * 0.01).to(torch.bfloat16)
    zeros = torch.randint(0, 16, (K // GROUP, N), dtype=torch.uint8, device=dev)
    return qweight, scales, zeros, qweight.numel() * 4 + scales.numel() * 2 + zeros.numel()


def compare(variants: dict, rows_list=(1, 4)) -> None:
    dev = torch.device("cuda")
    for name, (K, N) in SHAPES.items():
        qweight, scales, zeros, nbytes = operands(K, N, dev)
        w = torch.randn(N, K, dtype=torch.bfloat16, device=dev)
        for m in rows_list:
            x = torch.randn(m, K, dtype=torch.bfloat16, device=dev)
            row = {"shape": name, "rows": m, "bf16_us": round(timed_us(lambda: torch.nn.functional.linear(x, w)), 1)}
            want = None
            for label, module in variants.items():
                y = module.int_matmul(x, qweight, scales, zeros, GROUP, bits=4)
                want = y.float() if want is None else want
                row[f"{label}_us"] = round(timed_us(lambda: module.int_matmul(x, qweight, scales, zeros, GROUP, bits=4)), 1)
                row[f"{label}_TBps"] = round(nbytes / row[f"{label}_us"] / 1e6, 2)
                row[f"{label}_err"] = float((y.float() - want).abs().max() / want.abs().max())
            print(json.dumps(row), flush=True)
            del x


def sweep() -> None:
    dev = torch.device("cuda")
    kernel = int4_gemm._int4_gemv_kernel
    for name in ("8b.qkv", "8b.o", "8b.gate_up", "8b.down"):
        K, N = SHAPES[name]
        qweight, scales, zeros, nbytes = operands(K, N, dev)
        x = torch.randn(1, K, dtype=torch.bfloat16, device=dev)
        best = None
        for block_n in (32, 64, 128):
            for splits in (1, 2, 4):
                for warps in (4, 8):
                    block_k = 128
                    k_per_split = triton.cdiv(triton.cdiv(K, splits), block_k) * block_k
                    n_splits = triton.cdiv(K, k_per_split)
                    atomic = n_splits > 1

                    def run():
                        y = (torch.zeros(1, N, dtype=torch.float32, device=dev) if atomic
                             else torch.empty(1, N, dtype=torch.bfloat16, device=dev))
                        kernel[(triton.cdiv(N, block_n), n_splits)](
                            x, qweight, scales, zeros, y, 1, N, K, k_per_split, x.stride(0), qweight.stride(0),
                            scales.stride(0), y.stride(0), GROUP=GROUP, ROWS=2, BLOCK_N=block_n, BLOCK_K=block_k,
                            HAS_OFFSETS=False, BITS=4, ATOMIC=atomic, num_warps=warps)
                        return y.to(torch.bfloat16) if atomic else y

                    us = timed_us(run)
                    result = {"sweep": name, "block_n": block_n, "splits": n_splits, "warps": warps,
                              "us": round(us, 1), "TBps": round(nbytes / us / 1e6, 2)}
                    print(json.dumps(result), flush=True)
                    if best is None or us < best["us"]:
                        best = result
        print(json.dumps({"best": best}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", action="append", default=[], help="NAME=path to another int4_gemm.py")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    variants = {label: load_variant(path) for label, path in (v.split("=", 1) for v in args.variant)}
    variants["now"] = int4_gemm
    compare(variants)
    if not args.no_sweep:
        sweep()


if __name__ == "__main__":
    main()
