"""A/B of the decode fusions on a GPU: the Triton decode GEMV (with its SiLU epilogue) against cuBLAS,
rotary fused into the KV-cache write against the two kernels, then the whole Llama-3.1-8B shape
(dummy bf16 weights) at batch 1 and in the latency workload with the fusions off and on. A script
that prints figures and writes them as JSON, not a test.

1. (unless --skip-tests) the GPU correctness tests of the new kernels and of the engine with the
   fusions on and off, the command printed first;
2. per projection at M = 1 and 8 rows: microseconds per call as CUDA-graph replays of 50 calls, and
   the share of the measured copy bandwidth (weights read once);
3. (unless --skip-model) ``ward bench offline --model llama-3.1-8b --workloads latency,batch1`` in a
   subprocess per setting: WARD_DECODE_GEMV / WARD_ROPE_CACHE_FUSION both 0, then both 1.

The tile plans themselves are retuned by ``bench/gemv_sweep.py``.

Usage (from the repository root): python3 bench/decode_fusion.py --out decode_fusion.json
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.kernels import reshape_and_cache, rotary_embedding, silu_and_mul  # noqa: E402
from worker.kernels.decode_gemv import decode_gemv, reserve_workspace  # noqa: E402
from worker.kernels.decode_gemv_config import choose_plan  # noqa: E402
from worker.kernels.rotary_cache import rotary_and_cache  # noqa: E402

from worker.tuning.graph_timing import timed_us  # noqa: E402

PROJECTIONS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}  # N, K
LAYERS = 32
OFFLINE_ARGS = ["offline", "--model", "llama-3.1-8b", "--workloads", "latency,batch1"]  # ward bench's
TEST_COMMAND = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "tests/test_kernels.py",
                "tests/test_decode_fusion.py", "-k", "decode_gemv or rotary_with_cache or synchronise or fusions"]


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = timed_us(lambda: b.copy_(a), iters=10)
    del a, b
    return 2 * (1 << 30) / (us / 1e6)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def projections(bw: float) -> list[dict]:
    rows = []
    for (name, (n, k)), m in itertools.product(PROJECTIONS.items(), (1, 8)):
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * k**-0.5
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        reserve_workspace(w)
        floor = n * k * 2 / bw * 1e6
        row = {"shape": name, "rows": m, "floor_us": round(floor, 1), "plan": dataclasses.astuple(choose_plan(n, k, _sms()))}
        row["cublas_us"] = timed_us(lambda: F.linear(x, w))
        row["gemv_us"] = timed_us(lambda: decode_gemv(x, w))
        row["err"] = rel(decode_gemv(x, w), F.linear(x, w))
        if name == "gate_up":
            reserve_workspace(w, silu=True)
            row["cublas_silu_us"] = timed_us(lambda: silu_and_mul(F.linear(x, w)))
            row["gemv_silu_us"] = timed_us(lambda: decode_gemv(x, w, silu=True))
            row["silu_err"] = rel(decode_gemv(x, w, silu=True), silu_and_mul(F.linear(x, w)))
        for key in [key for key in row if key.endswith("_us")]:
            row[key] = round(row[key], 2)
        row["cublas_of_floor"] = round(floor / row["cublas_us"], 3)
        row["gemv_of_floor"] = round(floor / row["gemv_us"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del w, x
    return rows


def rotary_rows() -> list[dict]:
    rows = []
    heads, kv_heads, dim, block = 32, 8, 128, 16
    angles = torch.rand(8192, dim // 2, device="cuda") * 6.28
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1)  # unit rotations: values stay finite over replays
    cache = [torch.zeros(2000, block, kv_heads, dim, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    for t in (1, 8):
        qkv = torch.randn(t, (heads + 2 * kv_heads) * dim, dtype=torch.bfloat16, device="cuda")
        q = qkv[:, : heads * dim].view(t, heads, dim)
        k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(t, kv_heads, dim)
        v = qkv[:, (heads + kv_heads) * dim :].view(t, kv_heads, dim)
        positions = torch.randint(0, 8192, (t,), device="cuda")
        slots = torch.randperm(2000 * block, device="cuda")[:t]

        def separate():
            rotary_embedding(positions, q, k, cos_sin)
            reshape_and_cache(k, v, cache[0], cache[1], slots)

        row = {"rotary_cache_tokens": t, "separate_us": round(timed_us(separate), 2),
               "fused_us": round(timed_us(lambda: rotary_and_cache(positions, q, k, v, cache[0], cache[1], slots,
                                                                    cos_sin)), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def model_runs(settings: dict[str, str]) -> dict:
    out = {}
    for label, value in settings.items():
        env = {**os.environ, "WARD_DECODE_GEMV": value[0], "WARD_ROPE_CACHE_FUSION": value[1],
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with tempfile.TemporaryDirectory() as d:
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "ward", "bench", *OFFLINE_ARGS, "--out", d],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            path = Path(d) / "ward_bench_offline.json"
            if proc.returncode != 0 or not path.exists():
                out[label] = {"error": proc.stderr[-3000:]}
            else:
                results = json.loads(path.read_text())["results"]
                out[label] = {"batch1_tok_s": results["batch1"]["tok_s"], "batch1_step_ms": results["batch1"]["step_ms"],
                              "latency_ms": results["latency"]["mean_ms"], "seconds": round(time.monotonic() - t0, 1)}
        print(json.dumps({"model": label, **out[label]}), flush=True)
    return out


def _sms() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="decode_fusion.json", help="JSON file for every figure")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--gemv-only-run", action="store_true",
                        help="also run the model with the GEMV on and the rotary fusion off")
    parser.add_argument("--projection-sets", default="",
                        help="more model runs, one per WARD_DECODE_GEMV value in this ';'-separated list "
                             "(e.g. 'all;gate_up;qkv,gate_up'), each with the rotary fusion on")
    parser.add_argument("--skip-kernels", action="store_true", help="no per-projection timings")
    args = parser.parse_args()
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    import triton

    report["triton"] = triton.__version__
    if not args.skip_tests:
        print("$", " ".join(TEST_COMMAND[1:]), flush=True)
        proc = subprocess.run(TEST_COMMAND, capture_output=True, text=True, cwd=ROOT)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        print("\n".join(tail), flush=True)
        report["tests"] = {"exit": proc.returncode, "tail": tail}
    bw = copy_bandwidth()
    report["copy_bandwidth_tb_s"] = round(bw / 1e12, 3)
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s", flush=True)
    report["projections"] = [] if args.skip_kernels else projections(bw)
    report["rotary_cache"] = [] if args.skip_kernels else rotary_rows()
    if not args.skip_model:
        settings = {"off": ("0", "0"), "on": ("1", "1")}
        if args.gemv_only_run:
            settings = {"off": ("0", "0"), "gemv_only": ("1", "0"), "on": ("1", "1")}
        for value in filter(None, args.projection_sets.split(";")):
            settings[f"on[{value}]"] = (value, "1")
        report["model"] = model_runs(settings)
    summarize(report)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}", flush=True)
    return 0


def summarize(report: dict) -> None:
    print(f"\n== {report['device']}, copy {report['copy_bandwidth_tb_s']} TB/s ==")
    print(f"{'shape':8s} {'M':>2s} {'floor':>7s} {'cuBLAS':>8s} {'GEMV':>8s} {'ratio':>6s}  share of floor (cuBLAS / GEMV)")
    per_step = {1: [0.0, 0.0], 8: [0.0, 0.0]}
    for r in report["projections"]:
        print(f"{r['shape']:8s} {r['rows']:2d} {r['floor_us']:7.1f} {r['cublas_us']:8.2f} {r['gemv_us']:8.2f} "
              f"{r['cublas_us'] / r['gemv_us']:6.2f}  {r['cublas_of_floor']:.2f} / {r['gemv_of_floor']:.2f}")
        if r["shape"] == "gate_up":
            print(f"{'  +silu':8s} {r['rows']:2d} {'':7s} {r['cublas_silu_us']:8.2f} {r['gemv_silu_us']:8.2f} "
                  f"{r['cublas_silu_us'] / r['gemv_silu_us']:6.2f}")
            per_step[r["rows"]][0] += r["cublas_silu_us"]
            per_step[r["rows"]][1] += r["gemv_silu_us"]
        else:
            per_step[r["rows"]][0] += r["cublas_us"]
            per_step[r["rows"]][1] += r["gemv_us"]
    for m, (a, b) in per_step.items():
        print(f"per layer x {LAYERS} at M={m}: cuBLAS path {a * LAYERS / 1000:.3f} ms, GEMV path {b * LAYERS / 1000:.3f} ms")
    for r in report["rotary_cache"]:
        print(f"rotary + cache write, {r['rotary_cache_tokens']} tokens: separate {r['separate_us']} us, "
              f"fused {r['fused_us']} us")
    for label, m in report.get("model", {}).items():
        if "error" in m:
            print(f"model {label}: failed: {m['error'][-300:]}")
        else:
            print(f"model {label:9s}: batch-1 {m['batch1_tok_s']} tok/s ({m['batch1_step_ms']} ms/step), "
                  f"latency {m['latency_ms']} ms")


if __name__ == "__main__":
    sys.exit(main())
