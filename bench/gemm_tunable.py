"""Is there a faster cuBLAS/cuBLASLt algorithm than the default heuristic for the decode GEMMs at
large batch? A script for a GPU machine, not a test.

At 256 sequences a step the four projections of Llama-3.1-8B run at about 71% of the card's bf16
matmul figure (docs/performance.md, H200 profile of 2026-12-06), and they are the bulk of the
1,000 x 256/256 workload. PyTorch's TunableOp times every algorithm cuBLASLt offers for a shape and
keeps the fastest. This script times ``F.linear`` for each projection at a few row counts with the
default choice, then with TunableOp tuned for that shape, as CUDA-graph replays (the engine's decode
path), and prints the ratio. Nothing in the engine changes: the figures say whether wiring TunableOp
into the graph warm-up is worth doing.

The larger row counts are prefill steps (the 1,024/128 row is mostly prefill GEMMs).

Usage: python3 bench/gemm_tunable.py [--rows 16,64,128,256,2048,16384] [--out gemm_tunable.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
import torch.nn.functional as F

from worker.tuning.graph_timing import timed_us

PROJECTIONS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
               "lm_head": (128256, 4096)}  # N, K


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="16,64,128,256,2048,16384")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gemm_tunable.json"))
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    tunable = torch.cuda.tunable
    tunable.set_filename(os.path.join(tempfile.mkdtemp(), "tunableop_results.csv"))
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for name, (n, k) in PROJECTIONS.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * k**-0.5
        for m in rows:
            if name == "lm_head" and m > 256:  # the head runs on the sampled rows only
                continue
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            tunable.enable(False)
            default = timed_us(lambda: F.linear(x, w), iters=20)
            reference = F.linear(x, w)
            tunable.enable(True)
            tunable.tuning_enable(True)
            F.linear(x, w)  # tunes this shape (outside any graph capture)
            torch.cuda.synchronize()
            tunable.tuning_enable(False)
            tuned = timed_us(lambda: F.linear(x, w), iters=20)
            err = float((F.linear(x, w).float() - reference.float()).norm() / reference.float().norm())
            tunable.enable(False)
            tflops = 2 * m * n * k / 1e12
            row = {"projection": name, "rows": m, "default_us": round(default, 2), "tuned_us": round(tuned, 2),
                   "speedup": round(default / tuned, 3), "default_tflop_s": round(tflops / (default / 1e6), 1),
                   "tuned_tflop_s": round(tflops / (tuned / 1e6), 1), "rel_err": err}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
        del w
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
