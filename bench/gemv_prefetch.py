"""The decode GEMV's L2 prefetch of the next projection's weight (``WARD_GEMV_PREFETCH_MB``), timed on
a chain of Llama-3.1-8B decode layers. A script for a GPU machine that prints figures, not a test.

Each layer runs qkv, a spin of ``--gap-us`` on one SM (the rotary, attention and merge launches of a
decode step, which read next to nothing), o, gate_up with the SiLU epilogue and down, the GEMV
before each projection named by ``--into`` (default o, as the engine's default) asking for its
weight; enough layers that their weights exceed three times the L2 cache. The chain is captured in one CUDA graph and replayed; the figure is microseconds per layer
and the rate at which the layers' weights were read. Budgets are compared at one and eight rows,
with and without the gap; the budget with the lowest sum over the four cases is written to
``--best-file`` (0 when none beat no prefetch by 1%).

Usage (from the repository root): python3 bench/gemv_prefetch.py --out gemv_prefetch.json --best-file best.txt
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.kernels.decode_gemv import decode_gemv  # noqa: E402

from graph_timing import timed_us  # noqa: E402  (bench/, the script's own folder)

HIDDEN, INTERMEDIATE, QKV = 4096, 14336, 6144
WIN_BY = 0.99  # a budget must beat no prefetch by 1% (the timer's spread) to be proposed


class Layer:
    def __init__(self) -> None:
        def weight(rows: int, k: int) -> torch.Tensor:
            return torch.randn(rows, k, dtype=torch.bfloat16, device="cuda") * k**-0.5

        self.qkv, self.o = weight(QKV, HIDDEN), weight(HIDDEN, HIDDEN)
        self.gate_up, self.down = weight(2 * INTERMEDIATE, HIDDEN), weight(HIDDEN, INTERMEDIATE)

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in (self.qkv, self.o, self.gate_up, self.down))


def chain(layers: list[Layer], rows: int, budget: int, gap_cycles: int, into: set[str]):
    x = torch.randn(rows, HIDDEN, dtype=torch.bfloat16, device="cuda")
    q = torch.empty(rows, QKV, dtype=torch.bfloat16, device="cuda")
    h = torch.empty(rows, HIDDEN, dtype=torch.bfloat16, device="cuda")
    act = torch.empty(rows, INTERMEDIATE, dtype=torch.bfloat16, device="cuda")

    def ahead(name: str, weight: torch.Tensor) -> torch.Tensor | None:
        return weight if name in into else None

    def run() -> None:
        for i, layer in enumerate(layers):
            following = layers[(i + 1) % len(layers)].qkv
            decode_gemv(x, layer.qkv, out=q, prefetch=ahead("o", layer.o), prefetch_budget=budget)
            if gap_cycles:
                torch.cuda._sleep(gap_cycles)
            decode_gemv(q[:, :HIDDEN], layer.o, out=h, prefetch=ahead("gate_up", layer.gate_up),
                        prefetch_budget=budget)
            decode_gemv(h, layer.gate_up, silu=True, out=act, prefetch=ahead("down", layer.down),
                        prefetch_budget=budget)
            decode_gemv(act, layer.down, out=x, prefetch=ahead("qkv", following), prefetch_budget=budget)

    return run


def spin_cycles_per_us() -> float:
    """Clock cycles of ``torch.cuda._sleep`` per microsecond, measured."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1000)
    start.record()
    torch.cuda._sleep(1_000_000)
    end.record()
    torch.cuda.synchronize()
    return 1_000_000 / (start.elapsed_time(end) * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gemv_prefetch.json")
    parser.add_argument("--best-file", default="")
    parser.add_argument("--budgets-mb", default="0,4,8,16,24,32")
    parser.add_argument("--gap-us", type=float, default=10.0)
    parser.add_argument("--into", default="o", help="comma list of qkv, o, gate_up, down: the weights fetched ahead")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    probe = Layer()
    count = max(4, math.ceil(3 * props.L2_cache_size / probe.nbytes))
    layers = [probe] + [Layer() for _ in range(count - 1)]
    cycles_per_us = spin_cycles_per_us()
    budgets = [float(b) for b in args.budgets_mb.split(",")]
    into = set(args.into.split(","))
    report: dict = {"device": props.name, "l2_mb": props.L2_cache_size / 2**20, "layers": count, "into": sorted(into),
                    "layer_mb": round(probe.nbytes / 2**20, 1), "gap_us": args.gap_us, "cases": []}
    print(json.dumps({k: v for k, v in report.items() if k != "cases"}), flush=True)
    totals = {b: 0.0 for b in budgets}
    for rows in (1, 8):
        for gap in (0.0, args.gap_us):
            for mb in budgets:
                run = chain(layers, rows, int(mb * 2**20), int(gap * cycles_per_us), into)
                us = timed_us(run, iters=2) / count
                read_us = us - gap
                case = {"rows": rows, "gap_us": gap, "budget_mb": mb, "us_per_layer": round(us, 2),
                        "weights_tb_s": round(probe.nbytes / (read_us * 1e-6) / 1e12, 3)}
                report["cases"].append(case)
                totals[mb] += us
                print(json.dumps(case), flush=True)
    baseline = totals[budgets[0]] if budgets[0] == 0 else totals.get(0.0)
    best = min(totals, key=totals.get)
    if baseline is None or totals[best] > baseline * WIN_BY:
        best = 0.0
    report["sum_us"] = {str(b): round(t, 1) for b, t in totals.items()}
    report["best_mb"] = best
    print(json.dumps({"sum_us": report["sum_us"], "best_mb": best}), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if args.best_file:
        Path(args.best_file).write_text(f"{best:g}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
