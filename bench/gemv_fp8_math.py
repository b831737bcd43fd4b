"""How should the FP8 decode GEMV meet its e4m3 weights? A script for a GPU machine that prints
figures, not a test.

The decode GEMV over e4m3 weights (worker/kernels/decode_gemv.py) reads them at about three quarters
of the card's copy figure where the bf16 GEMV reads bf16 weights at nearly all of it (H100,
docs/performance.md, 2026-12-07): per two weights the sm_90 code spends an e4m3-to-float16
conversion and two float16-to-bfloat16 ones before a per-warp MMA. Three ways, timed per Llama-3.1-8B
projection at 1 and 8 rows as CUDA-graph replays over enough weight copies to exceed three times
the L2 cache:

- ``bf16``: the engine's (``FP8_MATH`` 0): the weight widened to the activations' bfloat16;
- ``f16``: the weight and x widened to float16 (``FP8_MATH`` 1): one conversion per two weights;
- ``w8a8``: x quantized to e4m3 per row beforehand and the dot taken e4m3 by e4m3 on the warpgroup
  MMA (``FP8_MATH`` 2, x padded to 64 rows): no conversion at all, the peer's numerics. Its plan is
  walked over a small grid (tile width, K step, stages, K splits), since 64-row tiles change what
  fits; the quantization of x is not in its time (a norm or SiLU kernel would write it).

Each way's output is checked against the dequantized product first (relative error printed).

Usage (from the repository root): python3 bench/gemv_fp8_math.py [--out gemv_fp8_math.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.kernels.decode_gemv import decode_gemv, reserve_workspace, shared_memory_limit  # noqa: E402
from worker.kernels.decode_gemv_config import GemvPlan, _fit_split, choose_plan  # noqa: E402
from worker.model.quant.linear import quantize_fp8_per_channel  # noqa: E402

from worker.tuning.graph_timing import copy_bandwidth, timed_us  # noqa: E402

SHAPES = {"qkv": (6144, 4096, False), "o": (4096, 4096, False), "gate_up_silu": (14336, 4096, True),
          "down": (4096, 14336, False)}
W8A8_GRID = list(itertools.product((32, 64), (128, 256, 512), (3, 4), (1, 2, 3)))


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gemv_fp8_math.json")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    bandwidth = copy_bandwidth()
    report: dict = {"device": props.name, "copy_tb_s": round(bandwidth / 1e12, 3), "torch": torch.__version__,
                    "shapes": {}}
    print(json.dumps({key: v for key, v in report.items() if key != "shapes"}), flush=True)
    limit = shared_memory_limit(torch.device("cuda", 0))
    for name in args.shapes.split(","):
        n, k, silu = SHAPES[name]
        t0 = time.monotonic()
        rows_w = 2 * n if silu else n
        copies = max(2, math.ceil(3 * props.L2_cache_size / (rows_w * k)))
        quantized = [quantize_fp8_per_channel(torch.randn(rows_w, k, dtype=torch.bfloat16, device="cuda") * k**-0.5)
                     for _ in range(copies)]
        weights = [(q, s.reshape(-1).float().contiguous()) for q, s in quantized]
        quantized = []
        floor_us = rows_w * k / bandwidth * 1e6
        row: dict = {"floor_us": round(floor_us, 2)}
        for m in (1, 8):
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            x_scale = (x.float().abs().amax(1) / 448.0).clamp_min(1e-12).contiguous()
            xq = (x.float() / x_scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            w0, s0 = weights[0]
            dense = (w0.float() * s0[:, None]).T

            def reference(inputs: torch.Tensor) -> torch.Tensor:
                full = inputs @ dense
                return torch.nn.functional.silu(full[:, :n]) * full[:, n:] if silu else full

            plan = choose_plan(n, k, props.multi_processor_count, silu, 1, limit, m)
            ways: dict = {}
            for label, fp8_math in (("bf16", 0), ("f16", 1)):
                for w, _ in weights:
                    reserve_workspace(w, silu, plan)
                err = _relative_error(decode_gemv(x, w0, silu=silu, plan=plan, weight_scale=s0, fp8_math=fp8_math),
                                      reference(x.float()))
                us = timed_us(lambda: [decode_gemv(x, w, silu=silu, plan=plan, out=out, weight_scale=s,
                                                   fp8_math=fp8_math) for w, s in weights],
                              iters=max(1, 60 // copies)) / copies
                ways[label] = {"plan": list(dataclasses.astuple(plan)), "us": round(us, 2), "error": round(err, 5),
                               "of_copy": round(floor_us / us, 3)}
            want = reference(xq.float() * x_scale[:, None])
            best = None
            for block_n, block_k, stages, split in W8A8_GRID:
                candidate = _fit_split(GemvPlan(block_n, block_k, 4, stages, split), k)
                try:
                    got = decode_gemv(xq, w0, silu=silu, plan=candidate, weight_scale=s0, x_scale=x_scale,
                                      out=torch.empty_like(out))
                    err = _relative_error(got, want)
                    us = timed_us(lambda: [decode_gemv(xq, w, silu=silu, plan=candidate, out=out, weight_scale=s,
                                                       x_scale=x_scale) for w, s in weights],
                                  iters=max(1, 60 // copies)) / copies
                except Exception as exc:  # noqa: BLE001 - a plan that cannot compile or launch is skipped
                    print(f"  skip w8a8 {dataclasses.astuple(candidate)}: {type(exc).__name__}: {str(exc)[:100]}",
                          flush=True)
                    continue
                if best is None or us < best["us"]:
                    best = {"plan": list(dataclasses.astuple(candidate)), "us": round(us, 2), "error": round(err, 5),
                            "of_copy": round(floor_us / us, 3)}
            ways["w8a8"] = best
            row[f"m{m}"] = ways
        row["seconds"] = round(time.monotonic() - t0, 1)
        report["shapes"][name] = row
        print(json.dumps({name: row}), flush=True)
        weights = []
        torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
