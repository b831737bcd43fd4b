"""Retunes the decode GEMV's tile plans (worker/kernels/decode_gemv_config.py) on the card at hand.
A script for a GPU machine that prints figures, not a test.

For each Llama-3.1-8B projection at one row it starts from the plan the engine would choose and
walks one axis at a time (split K, tile width, K step, stages, warps), keeping a change only when
it is at least 1% faster, for up to two passes. Each timing is a CUDA-graph replay of the GEMV over
enough copies of the weight to exceed three times the L2 cache, so every call reads its weights from
memory as in the model (a single weight replayed would partly stay in L2). The winner and the
starting plan are then timed again back to back at one and eight rows.

Writes the figures as JSON (--out) and, with --plans-file, a ``WARD_GEMV_PLANS`` value
(semicolon-separated) with the shapes whose winner beat the starting plan by more than 2%, for an
A/B of the whole model (bench/pdl_ab.sh). With --fp8 the weights are e4m3 with per-row scales (the
FP8 layers' decode) and the walk starts from their plan (twice the 16-bit K step); the proposal is
then for an FP8 model's runs (``WARD_GEMV_PLANS`` keys a shape, not its weights' type). With
--rows R the walk times R rows a launch and starts from the plan a launch of R rows takes; for R of
at least ``WIDE_ROWS`` the proposal is a ``WARD_GEMV_WIDE_PLANS`` value (plans for those launches only).

Usage (from the repository root): python3 bench/gemv_sweep.py --out gemv_sweep.json --plans-file plans.txt [--fp8]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.kernels.decode_gemv import shared_memory_limit  # noqa: E402
from worker.kernels.decode_gemv_config import WIDE_ROWS, GemvPlan, _fit_split, choose_plan  # noqa: E402
from worker.kernels.gemv_tuned import TunedShape  # noqa: E402
from worker.tuning.gemv_tuner import AXES, GemvTimer  # noqa: E402

from worker.tuning.graph_timing import copy_bandwidth  # noqa: E402
from worker.tuning.plan_walk import walk  # noqa: E402

# name: (N as the plan table keys it, K, SiLU epilogue); the SiLU weight has 2N rows
SHAPES = {"qkv": (6144, 4096, False), "o": (4096, 4096, False), "down": (4096, 14336, False),
          "gate_up_silu": (14336, 4096, True)}
REPORT_IF_FASTER = 0.98  # and the final plan by 2% to be proposed


def write_report(report: dict, proposals: list[str], variable: str, out: str, plans_file: str = "") -> None:
    """Adds the proposal (``variable``'s value: the entries joined by ';') to the report, prints it as
    ``variable=value``, writes the report as JSON to ``out`` and the bare value to ``plans_file``."""
    report["proposed_plans"] = ";".join(proposals)
    print(f"{variable}=" + report["proposed_plans"], flush=True)
    Path(out).write_text(json.dumps(report, indent=1))
    if plans_file:
        Path(plans_file).write_text(report["proposed_plans"])


def plan_text(n: int, k: int, plan: GemvPlan) -> str:
    return f"{n}x{k}=" + ":".join(str(v) for v in dataclasses.astuple(plan))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gemv_sweep.json")
    parser.add_argument("--plans-file", default="", help="write the proposed WARD_GEMV_PLANS value here")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ",".join(SHAPES))
    parser.add_argument("--fp8", action="store_true", help="e4m3 weights with per-row scales (FP8 layers)")
    parser.add_argument("--rows", type=int, default=1, help="rows a launch while walking (1 to 8)")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    bandwidth = copy_bandwidth()  # read + write: a device copy's figure, not a read-only one
    report: dict = {"device": props.name, "sms": props.multi_processor_count, "l2_mb": props.L2_cache_size / 2**20,
                    "copy_tb_s": round(bandwidth / 1e12, 3), "torch": torch.__version__, "fp8": args.fp8, "shapes": {}}
    print(json.dumps({k: v for k, v in report.items() if k != "shapes"}), flush=True)
    proposals = []
    for name in args.shapes.split(","):
        n, k, silu = SHAPES[name]
        t0 = time.monotonic()
        bench = GemvTimer(TunedShape(n, k, silu, 1 if args.fp8 else 2, args.rows >= WIDE_ROWS), props.L2_cache_size)
        start = choose_plan(n, k, props.multi_processor_count, silu, 1 if args.fp8 else 2,
                            shared_memory_limit(torch.device("cuda", 0)), args.rows)
        best_plan, _, trials = walk(functools.partial(bench.time, rows=args.rows), start, AXES,
                                    functools.partial(_fit_split, k=k))
        floor_us = bench.floor_bytes / bandwidth * 1e6
        final = {}
        for label, plan in (("start", start), ("best", best_plan)):
            for rows in sorted({1, 8, args.rows}):
                us = bench.time(plan, rows)
                final[f"{label}_m{rows}_us"] = None if us is None else round(us, 2)
        row = {"start": list(dataclasses.astuple(start)), "best": list(dataclasses.astuple(best_plan)),
               "floor_us": round(floor_us, 2), **final, "trials": trials,
               "seconds": round(time.monotonic() - t0, 1)}
        report["shapes"][name] = row
        print(json.dumps({name: {key: v for key, v in row.items() if key != "trials"}}), flush=True)
        start_us, best_us = final[f"start_m{args.rows}_us"], final[f"best_m{args.rows}_us"]
        if best_plan != start and start_us and best_us and best_us < start_us * REPORT_IF_FASTER:
            proposals.append(plan_text(n, k, best_plan))
        del bench
        torch.cuda.empty_cache()
    variable = "WARD_GEMV_WIDE_PLANS" if args.rows >= WIDE_ROWS else "WARD_GEMV_PLANS"
    report["proposal_variable"] = variable
    write_report(report, proposals, variable, args.out, args.plans_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
