"""Does a decode GEMV that fetches its weight tiles with the Hopper tensor-memory accelerator (TMA)
read the weights faster than the engine's (worker/kernels/decode_gemv.py, whose tiles come through
pointer loads the compiler pipelines with cp.async)? A script for a GPU machine that prints figures,
not a test.

At batch 1 the decode GEMV reads the layers' weights at about 88% of the card's copy figure on an
H200 (docs/performance.md, 2026-12-06) where cuBLAS reads the LM head's at 100%: that gap is the
distance to the batch-1 target. A TMA load moves a whole tile per instruction, with no per-thread
address arithmetic, and is how Hopper's fastest GEMMs stream their operands.

For each Llama-3.1-8B projection (qkv, o, gate_up with the SiLU epilogue, down) at 1 and 8 rows:
the engine's kernel in its table's plan, and the probe's TMA kernel over a small grid of tile
plans (no split K), each a CUDA-graph replay over enough copies of the weight to exceed three times
the L2 cache. Every probe plan is first checked against the engine's output (same rounding rules:
fp32 sums, the SiLU epilogue rounded as the engine rounds it).

Usage (from the repository root): python3 bench/gemv_tma_probe.py [--out gemv_tma_probe.json] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.kernels.decode_gemv import decode_gemv, reserve_workspace, shared_memory_limit  # noqa: E402
from worker.kernels.decode_gemv_config import BLOCK_M, choose_plan  # noqa: E402

from worker.tuning.graph_timing import copy_bandwidth, timed_us  # noqa: E402

SHAPES = {"qkv": (6144, 4096, False), "o": (4096, 4096, False), "gate_up_silu": (14336, 4096, True),
          "down": (4096, 14336, False)}


@triton.jit
def _gemv_tma_kernel(x_ptr, w_desc, y_ptr, M, N, K, stride_xm, stride_ym,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SILU: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Grid (cdiv(N, BLOCK_N),): one program per column tile over the whole K; with SILU the up rows
    start at row N of the weight."""
    pid_n = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    r_ok = rows < M
    row0 = pid_n * BLOCK_N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=NUM_STAGES):
        offs_k = k + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :], mask=r_ok[:, None], other=0.0)
        w = w_desc.load([row0, k])
        acc = tl.dot(x, tl.trans(w), acc)
        if SILU:
            u = w_desc.load([row0 + N, k])
            acc_up = tl.dot(x, tl.trans(u), acc_up)
    dtype = y_ptr.dtype.element_ty
    if SILU:
        gate = acc.to(dtype).to(tl.float32)
        up = acc_up.to(dtype).to(tl.float32)
        acc = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32) * up
    cols = row0 + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], acc.to(dtype),
             mask=r_ok[:, None] & (cols < N)[None, :])


def _descriptor(weight: torch.Tensor, block_n: int, block_k: int):
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(weight, [block_n, block_k])


def gemv_tma(x: torch.Tensor, desc, n: int, k: int, silu: bool, plan: tuple[int, int, int, int],
             out: torch.Tensor) -> torch.Tensor:
    block_n, block_k, warps, stages = plan
    _gemv_tma_kernel[(triton.cdiv(n, block_n),)](
        x, desc, out, x.shape[0], n, k, x.stride(0), out.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=block_k, SILU=silu, NUM_STAGES=stages, num_warps=warps)
    return out


def _allocator(size: int, alignment: int, stream) -> torch.Tensor:  # noqa: ANN001 - Triton's callback
    return torch.empty(size, dtype=torch.int8, device="cuda")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gemv_tma_probe.json")
    parser.add_argument("--quick", action="store_true", help="a smaller grid of probe plans")
    args = parser.parse_args()
    if hasattr(triton, "set_allocator"):
        triton.set_allocator(_allocator)
    props = torch.cuda.get_device_properties(0)
    bandwidth = copy_bandwidth()
    report: dict = {"device": props.name, "sms": props.multi_processor_count, "copy_tb_s": round(bandwidth / 1e12, 3),
                    "torch": torch.__version__, "triton": triton.__version__, "shapes": {}}
    print(json.dumps({key: v for key, v in report.items() if key != "shapes"}), flush=True)
    grid = list(itertools.product((16, 32, 64), (64, 128, 256), (4,), (3, 4, 6, 8)))
    if args.quick:
        grid = list(itertools.product((32, 64), (128, 256), (4,), (4, 6)))
    limit = shared_memory_limit(torch.device("cuda", 0))
    for name, (n, k, silu) in SHAPES.items():
        t0 = time.monotonic()
        rows_w = 2 * n if silu else n
        copies = max(2, math.ceil(3 * props.L2_cache_size / (rows_w * k * 2)))
        weights = [torch.randn(rows_w, k, dtype=torch.bfloat16, device="cuda") * k**-0.5 for _ in range(copies)]
        row: dict = {"floor_us": round(rows_w * k * 2 / bandwidth * 1e6, 2)}
        for m in (1, 8):
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            plan = choose_plan(n, k, props.multi_processor_count, silu, 2, limit, m)
            for w in weights:
                reserve_workspace(w, silu, plan)
            want = decode_gemv(x, weights[0], silu=silu, plan=plan).float()
            engine_us = timed_us(lambda: [decode_gemv(x, w, silu=silu, plan=plan, out=out) for w in weights],
                                 iters=max(1, 60 // copies)) / copies
            best, best_us, tried = None, None, []
            for probe in grid:
                try:
                    descs = [_descriptor(w, probe[0], probe[1]) for w in weights]
                    got = gemv_tma(x, descs[0], n, k, silu, probe, torch.empty_like(out)).float()
                    err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
                    if err > 2e-2:
                        tried.append({"plan": probe, "error": f"differs: {err:.3g}"})
                        continue
                    us = timed_us(lambda: [gemv_tma(x, d, n, k, silu, probe, out) for d in descs],
                                  iters=max(1, 60 // copies)) / copies
                except Exception as exc:  # noqa: BLE001 - a plan that cannot compile or launch is recorded
                    tried.append({"plan": probe, "error": f"{type(exc).__name__}: {str(exc)[:100]}"})
                    continue
                tried.append({"plan": probe, "us": round(us, 2)})
                if best_us is None or us < best_us:
                    best, best_us = probe, us
            row[f"m{m}"] = {"engine_plan": [plan.block_n, plan.block_k, plan.num_warps, plan.num_stages, plan.split_k],
                            "engine_us": round(engine_us, 2), "tma_best": best,
                            "tma_us": None if best_us is None else round(best_us, 2),
                            "tma_vs_engine": None if best_us is None else round(engine_us / best_us, 3),
                            "tried": tried}
        row["seconds"] = round(time.monotonic() - t0, 1)
        report["shapes"][name] = row
        print(json.dumps({name: {key: ({kk: vv for kk, vv in v.items() if kk != "tried"} if isinstance(v, dict) else v)
                                 for key, v in row.items()}}), flush=True)
        weights = []
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
