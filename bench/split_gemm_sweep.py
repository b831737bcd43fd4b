"""The split-K GEMM (worker/kernels/split_gemm.py) against cuBLAS on the card at hand, per projection and
row count. A script for a GPU machine that prints figures, not a test.

For each Llama-3.1-8B projection (default o and down, the narrow ones the kernel is for) and each row
count (default 64, 128, 256 and 512: a decode graph's batch) it times cuBLAS (``F.linear``) and the
split GEMM from the plan the engine would choose, then walks one axis at a time (split K, tile
rows, columns, K step, stages, warps), keeping a change only when it is at least 1% faster, for up
to two passes. Each timing is a CUDA-graph replay over enough copies of the weight to exceed three
times the L2 cache, as in the model. Also printed: the floor, the larger of the weights' read at
the card's copy figure and the arithmetic at its bf16 matmul figure.

Writes the figures as JSON (--out) and, with --plans-file, a ``WARD_SPLIT_GEMM_PLANS`` value with
the (shape, row bucket) pairs whose best plan beat cuBLAS by more than 2%, for an A/B of the whole
model with ``WARD_SPLIT_GEMM`` (``STEPS=splitgemm bash bench/gpu_session.sh`` runs both).

Usage (from the repository root): python3 bench/split_gemm_sweep.py --out split_gemm.json --plans-file plans.txt
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.kernels.split_gemm import split_gemm  # noqa: E402
from worker.kernels.split_gemm_config import SplitGemmPlan, choose_plan, fit_split, row_bucket  # noqa: E402

from graph_timing import copy_bandwidth, timed_us  # noqa: E402  (bench/, the script's own folder)
from plan_walk import walk, write_report  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
AXES = {"split_k": (1, 2, 3, 4, 6, 8), "block_m": (64, 128), "block_n": (64, 128, 256), "block_k": (32, 64, 128),
        "num_stages": (3, 4, 5), "num_warps": (4, 8)}
REPORT_IF_FASTER = 0.98  # and the final plan must beat cuBLAS by 2% to be proposed


class Bench:
    """Weights of one shape (copies spilling the L2) and the timers of cuBLAS and of a plan on them."""

    def __init__(self, n: int, k: int, l2_bytes: int) -> None:
        copies = max(2, math.ceil(3 * l2_bytes / (n * k * 2)))
        self.weights = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * k**-0.5 for _ in range(copies)]
        self.n, self.k = n, k

    def _timed(self, rows: int, call) -> float:
        x = torch.randn(rows, self.k, dtype=torch.bfloat16, device="cuda")
        out = torch.empty(rows, self.n, dtype=torch.bfloat16, device="cuda")

        def calls() -> None:
            for w in self.weights:
                call(x, w, out)

        return timed_us(calls, iters=max(1, 60 // len(self.weights))) / len(self.weights)

    def cublas(self, rows: int) -> float:
        return self._timed(rows, lambda x, w, out: torch.mm(x, w.t(), out=out))

    def time(self, plan: SplitGemmPlan, rows: int) -> float | None:
        """Microseconds per call, or None when the plan does not compile or launch (shared memory)."""
        try:  # the eager calls before the capture reserve the plan's workspace
            return self._timed(rows, lambda x, w, out: split_gemm(x, w, plan=plan, out=out))
        except Exception as exc:  # noqa: BLE001 - a plan that cannot run is skipped, its reason kept
            print(f"  skip {dataclasses.astuple(plan)}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            return None

    def agrees(self, plan: SplitGemmPlan, rows: int) -> float:
        """The plan's largest difference from cuBLAS over cuBLAS's largest value (rounding only)."""
        x = torch.randn(rows, self.k, dtype=torch.bfloat16, device="cuda")
        ref = F.linear(x, self.weights[0]).float()
        return float((split_gemm(x, self.weights[0], plan=plan).float() - ref).abs().max() / ref.abs().max())


def matmul_flops() -> float:
    """The card's bf16 matmul figure (8192^3, as ``ward bench`` measures it), FLOP/s."""
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    us = timed_us(lambda: a @ a, iters=10)
    return 2 * 8192**3 / (us * 1e-6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="split_gemm_sweep.json")
    parser.add_argument("--plans-file", default="", help="write the proposed WARD_SPLIT_GEMM_PLANS value here")
    parser.add_argument("--shapes", default="o,down", help="comma-separated subset of " + ",".join(SHAPES))
    parser.add_argument("--rows", default="64,128,256,512", help="comma-separated row counts (9 to 512)")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    bandwidth, flops = copy_bandwidth(), matmul_flops()
    report: dict = {"device": props.name, "sms": props.multi_processor_count, "copy_tb_s": round(bandwidth / 1e12, 3),
                    "matmul_tflop_s": round(flops / 1e12, 1), "torch": torch.__version__, "cases": []}
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}), flush=True)
    proposals = []
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        bench = Bench(n, k, props.L2_cache_size)
        for rows in (int(r) for r in args.rows.split(",")):
            t0 = time.monotonic()
            start = choose_plan(rows, n, k, props.multi_processor_count)
            best_plan, best_us, trials = walk(functools.partial(bench.time, rows=rows), start, AXES,
                                              functools.partial(fit_split, k=k))
            cublas_us = bench.cublas(rows)
            floor_us = max(n * k * 2 / bandwidth, 2 * rows * n * k / flops) * 1e6
            row = {"shape": name, "rows": rows, "floor_us": round(floor_us, 2), "cublas_us": round(cublas_us, 2),
                   "start": list(dataclasses.astuple(start)), "start_us": trials[0]["us"],
                   "best": list(dataclasses.astuple(best_plan)), "best_us": None if best_us is None else round(best_us, 2),
                   "best_over_cublas": None if best_us is None else round(cublas_us / best_us, 3),
                   "best_max_diff": round(bench.agrees(best_plan, rows), 5), "trials": trials,
                   "seconds": round(time.monotonic() - t0, 1)}
            report["cases"].append(row)
            print(json.dumps({key: v for key, v in row.items() if key != "trials"}), flush=True)
            if best_us is not None and best_us < cublas_us * REPORT_IF_FASTER:
                proposals.append(f"{n}x{k}@{row_bucket(rows)}={best_plan.fields()}")
        del bench
        torch.cuda.empty_cache()
    write_report(report, proposals, "WARD_SPLIT_GEMM_PLANS", args.out, args.plans_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
