"""Decode-sized matmuls (M = 1..16 rows) of the Llama-3.1-8B projections: cuBLAS with the
checkpoint's [N, K] weights, cuBLAS with [K, N] weights, and a Triton small-M kernel over a few
tile shapes. Prints microseconds and the fraction of the measured copy bandwidth. A script."""
from __future__ import annotations

import itertools
import json
import os

import torch
import triton
import triton.language as tl


@triton.jit
def small_m_linear_kernel(x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=offs_m[:, None] < M, other=0.0)
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=offs_n[:, None] < N, other=0.0)
        acc += tl.dot(x, tl.trans(w))
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def triton_linear(x, w, bn, bk, warps, stages):
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    small_m_linear_kernel[(triton.cdiv(N, bn),)](x, w, out, M, N, K, x.stride(0), w.stride(0), out.stride(0),
                                                 BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return out


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1000  # us


def main() -> None:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    bw = 2 * (1 << 30) / (bench(lambda: b.copy_(a)) / 1e6)
    del a, b
    shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336), "lm_head": (128256, 4096)}
    configs = list(itertools.product([16, 32, 64], [128, 256, 512], [4, 8], [3, 4]))
    report = {"copy_bandwidth_tb_s": round(bw / 1e12, 3), "shapes": {}}
    for name, (N, K) in shapes.items():
        w = torch.randn(N, K, dtype=torch.bfloat16, device="cuda") * 0.02
        wt = w.t().contiguous()
        for M in (1, 8):
            x = torch.randn(M, K, dtype=torch.bfloat16, device="cuda")
            ref = x @ w.t()
            floor = N * K * 2 / bw * 1e6
            row = {"floor_us": round(floor, 1), "cublas_NK_us": round(bench(lambda: x @ w.t()), 1),
                   "cublas_KN_us": round(bench(lambda: x @ wt), 1)}
            best = None
            for bn, bk, warps, stages in configs:
                try:
                    out = triton_linear(x, w, bn, bk, warps, stages)
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    if err > 1e-2:
                        continue
                    t = bench(lambda: triton_linear(x, w, bn, bk, warps, stages))
                except Exception:  # a config that does not fit (shared memory) is skipped
                    continue
                if best is None or t < best[0]:
                    best = (t, bn, bk, warps, stages)
            row["triton_best_us"], row["triton_config"] = round(best[0], 1), best[1:]
            report["shapes"][f"{name}_M{M}"] = row
            print(f"{name:8s} M={M}: floor {floor:6.1f}  cublas {row['cublas_NK_us']:6.1f}  cublas[K,N] "
                  f"{row['cublas_KN_us']:6.1f}  triton {best[0]:6.1f} {best[1:]}", flush=True)
    json.dump(report, open(os.path.join(os.environ.get("OUT", "."), "gemv_tune.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
