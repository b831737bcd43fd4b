"""Where a lone prompt's first token goes: one engine, fresh random prompts of --prompt tokens,
max_tokens 1, one request at a time. For each request: the wall time of its step(s), the device
time between two events around them, and (a profiled pass) the sum of its kernels and their span, so
host gaps, kernel time and clock behaviour can be told apart. The card's SM clock and power are
sampled beside it (nvidia-smi, 20 ms), and each projection's GEMM at the prompt's row count is timed
alone. --gaps-ms idles the card between requests (0: back to back). A script, not a test.
Usage: python bench/prefill_anatomy.py [--model llama-3.1-8b] [--prompt 1024] [--requests 20]
       [--gaps-ms 0,100] [--budget 8192] [--out FILE]"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ward.benchmarks.models import write_config_dir
from worker import LLM, SamplingParams

SMI_FIELDS = "timestamp,clocks.sm,power.draw,clocks_event_reasons.active"
GEMM_MARKERS = ("gemm", "nvjet", "xmma", "cutlass", "cublas")


def sampler(path: str) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits",
                                 "-lms", "20"], stdout=open(path, "w"), stderr=subprocess.DEVNULL)
    except OSError:
        return None


def read_samples(path: str) -> list[tuple[float, float, float, str]]:
    """(unix time, SM MHz, watts, event reasons) per sample."""
    rows = []
    for line in open(path):
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            when = dt.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((when, float(parts[1]), float(parts[2]), parts[3]))
        except ValueError:
            continue
    return rows


CUDA = torch.cuda.is_available()


def one_request(engine, ids: list[int], params: SamplingParams, rid: str) -> dict:
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if CUDA else None
    if CUDA:
        torch.cuda.synchronize()
    t0, wall0 = time.perf_counter(), time.time()
    engine.add_request(rid, {"prompt_token_ids": ids}, params)
    if events:
        events[0].record()
    steps = 0
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    if events:
        events[1].record()
        torch.cuda.synchronize()
    wall_ms = 1000 * (time.perf_counter() - t0)
    device_ms = events[0].elapsed_time(events[1]) if events else wall_ms
    return {"wall_ms": wall_ms, "device_ms": device_ms, "steps": steps, "t0": wall0, "t1": time.time()}


def kernels_of(prof) -> list:
    kind = "CUDA" if CUDA else "CPU"
    return sorted((e for e in prof.events() if e.device_type.name == kind), key=lambda e: e.time_range.start)


def gemm_alone(model, rows: int, reps: int = 20) -> dict:
    """Each projection's weight times a [rows, in] input, timed alone (cuBLAS, as in prefill)."""
    layer = model.layers[0]
    shapes = {"qkv": layer.self_attn.qkv_proj.weight, "o": layer.self_attn.o_proj.weight,
              "gate_up": layer.mlp.gate_up_proj.weight, "down": layer.mlp.down_proj.weight}
    out = {}
    for name, w in shapes.items():
        x = torch.randn(rows, w.shape[1], device=w.device, dtype=w.dtype)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        if CUDA:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.linear(x, w)
        if CUDA:
            torch.cuda.synchronize()
        us = 1e6 * (time.perf_counter() - t) / reps
        out[name] = {"us": round(us, 1), "tflops": round(2 * rows * w.shape[0] * w.shape[1] / us / 1e6, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--gaps-ms", default="0,100")
    ap.add_argument("--budget", type=int, default=8192, help="max_num_batched_tokens (the worker's default)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "prefill_anatomy.json"))
    args = ap.parse_args()
    llm = LLM(model=write_config_dir(args.model, tempfile.mkdtemp(prefix="ward-anatomy-")), load_format="dummy",
              dtype="bfloat16" if CUDA else "float32", max_model_len=4096, max_num_batched_tokens=args.budget)
    engine = llm.engine
    model = engine.runner.model if hasattr(engine, "runner") else None
    params = SamplingParams(max_tokens=1, ignore_eos=True, detokenize=False, temperature=0.0)
    counter = iter(range(10**9))

    def fresh() -> list[int]:
        n = next(counter)
        return [(1000 + n * 7919 + j * 31) % 120000 + 1000 for j in range(args.prompt)]

    for _ in range(5):
        one_request(engine, fresh(), params, f"w{next(counter)}")
    smi_path = tempfile.NamedTemporaryFile(suffix=".csv", delete=False).name
    smi = sampler(smi_path)
    time.sleep(0.3)
    report: dict = {"card": torch.cuda.get_device_name() if CUDA else "cpu", "prompt": args.prompt, "gaps": {}}
    for gap in [float(g) for g in args.gaps_ms.split(",")]:
        rows = []
        for _ in range(args.requests):
            time.sleep(gap / 1000)
            rows.append(one_request(engine, fresh(), params, f"r{next(counter)}"))
        report["gaps"][str(gap)] = rows
    # the profiled pass, back to back
    profiled = []
    with profile(activities=[ProfilerActivity.CUDA if CUDA else ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            profiled.append(one_request(engine, fresh(), params, f"p{next(counter)}"))
    kernels = kernels_of(prof)
    per_name: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for k in kernels:
        per_name[k.name[:80]][0] += k.device_time / 5
        per_name[k.name[:80]][1] += 1
    total_us = sum(k.device_time for k in kernels) / 5
    gemm_us = sum(k.device_time for k in kernels if any(m in k.name.lower() for m in GEMM_MARKERS)) / 5
    span_us = (kernels[-1].time_range.end - kernels[0].time_range.start) if kernels else 0
    report["profiled"] = {
        "wall_ms": [round(r["wall_ms"], 2) for r in profiled], "device_ms": [round(r["device_ms"], 2) for r in profiled],
        "kernel_ms_per_request": round(total_us / 1000, 2), "gemm_ms_per_request": round(gemm_us / 1000, 2),
        "kernels_per_request": len(kernels) // 5, "span_ms_all_five": round(span_us / 1000, 2),
        "top": sorted(([n, round(v[0], 1), v[1] // 5] for n, v in per_name.items()), key=lambda r: -r[1])[:16],
    }
    if smi is not None:
        time.sleep(0.1)
        smi.terminate()
        samples = read_samples(smi_path)
        for rows in report["gaps"].values():
            for r in rows:
                inside = [s for s in samples if r["t0"] - 0.02 <= s[0] <= r["t1"] + 0.02]
                r["sm_mhz"] = [s[1] for s in inside]
                r["watts"] = [s[2] for s in inside]
                r["reasons"] = sorted({s[3] for s in inside})
        report["smi_samples"] = len(samples)
    if model is not None:
        report["gemm_alone"] = gemm_alone(model, args.prompt)
    summary = {}
    for gap, rows in report["gaps"].items():
        walls, devs = [r["wall_ms"] for r in rows], [r["device_ms"] for r in rows]
        summary[gap] = {"wall_p50": round(statistics.median(walls), 2), "wall_min": round(min(walls), 2),
                        "wall_max": round(max(walls), 2), "device_p50": round(statistics.median(devs), 2),
                        "device_min": round(min(devs), 2), "steps": sorted({r["steps"] for r in rows})}
        for r in rows:
            print(json.dumps({"gap": gap, "wall": round(r["wall_ms"], 2), "device": round(r["device_ms"], 2),
                              "mhz": r.get("sm_mhz"), "w": r.get("watts"), "why": r.get("reasons")}))
    report["summary"] = summary
    print(json.dumps({k: v for k, v in report.items() if k not in ("gaps",)}, indent=1))
    json.dump(report, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
