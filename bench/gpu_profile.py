"""Where a step's device time goes: CUDA kernels by total time in steady decode (batch 1, the latency
test's batch 8 and a large batch) and in a full prefill step, from the torch profiler, beside each
case's wall time per step (the same number of steps just before, unprofiled). A script, not a test.
Usage: python bench/gpu_profile.py [--model llama-3.1-8b]"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ward.benchmarks.models import write_config_dir
from worker import LLM, SamplingParams


def kernel_table(prof, steps: int, top: int = 14) -> list[tuple[str, float, int]]:
    agg = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type.name == "CUDA":
            agg[e.name[:70]][0] += e.device_time
            agg[e.name[:70]][1] += 1
    rows = sorted(((k, v[0] / steps, v[1] // steps) for k, v in agg.items()), key=lambda r: -r[1])
    return rows[:top]


def steady(engine, n_req: int, prompt: int, warm_steps: int, steps: int, top: int = 14) -> tuple[list, float, float | None]:
    p = SamplingParams(max_tokens=warm_steps + 2 * steps + 20, min_tokens=warm_steps + 2 * steps + 20, ignore_eos=True,
                       detokenize=False, temperature=0)
    # each case its own token range: a prompt sharing blocks with an earlier case's (aborted, still
    # cached) would be mostly a prefix-cache hit and its "prefill" a short chunk
    base = 1000 + 10007 * (n_req + prompt)
    for i in range(n_req):
        ids = [(base + i * 7 + j) % 100000 + 1000 for j in range(prompt)]
        engine.add_request(f"p{n_req}-{i}", {"prompt_token_ids": ids}, p)
    for _ in range(warm_steps):
        engine.step()
    torch.cuda.synchronize()
    wall_us = None
    if warm_steps:  # steady decode: time the same number of steps first (a prefill case has one step only)
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall_us = round((time.perf_counter() - start) / steps * 1e6, 1)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    table = kernel_table(prof, steps, top)
    total = sum(r[1] for r in kernel_table(prof, steps, 10**6))
    engine.abort_request([f"p{n_req}-{i}" for i in range(n_req)])
    while engine.has_unfinished_requests():
        engine.step()
    return table, total, wall_us


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--top", type=int, default=14, help="kernels listed per case")
    a = ap.parse_args()
    d = write_config_dir(a.model, tempfile.mkdtemp())
    llm = LLM(model=d, load_format="dummy", dtype="bfloat16", max_model_len=4096)
    eng = llm.engine
    report = {}
    for name, n_req, prompt, warm in [("decode_b1_ctx512", 1, 512, 40), ("decode_b8_ctx32", 8, 32, 40),
                                      ("decode_b256_ctx1000", 256, 1000, 40), ("prefill_8x1024", 8, 1024, 0)]:
        steps = 1 if name.startswith("prefill") else 30
        table, total, wall = steady(eng, n_req, prompt, warm, steps, a.top)
        report[name] = {"kernel_us_per_step": round(total, 1), "wall_us_per_step": wall, "top": table}
        print(f"== {name}: {total:.0f} us of kernels per step" + (f", {wall:.0f} us wall per step (unprofiled)" if wall else ""))
        for k, us, cnt in table:
            print(f"  {us:9.1f} us  x{cnt:<4d} {k}")
    json.dump(report, open(os.path.join(os.environ.get("OUT", "."), "gpu_profile.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
