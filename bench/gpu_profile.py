"""Where a step's device time goes: CUDA kernels by total time in steady decode (batch 1, the latency
test's batch 8 and a large batch), in a full prefill step, and in mixed steps (serving's shape: a
batch decoding while each step also prefills a new prompt), from the torch profiler, beside each
case's wall time per step (the same number of steps just before, unprofiled). A script, not a test.
Usage: python bench/gpu_profile.py [--model llama-3.1-8b] [--quantization fp8] [--kv-cache-dtype fp8]
[--cases NAME ...]"""
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


def profile_case(engine, n_req: int, prompt: int, warm_steps: int, steps: int, chunk: int = 0,
                 top: int = 14) -> tuple[list, float, float | None]:
    """n_req requests of ``prompt`` tokens, ``warm_steps`` steps, then ``steps`` steps timed and the same
    number profiled. With ``chunk``, one new prompt of that many tokens arrives before each timed step,
    so every timed step is the decodes plus a whole prefill chunk (serving's mixed steps). A case with
    no warm-up (a prefill) is profiled only."""
    p = SamplingParams(max_tokens=warm_steps + 2 * steps + 20, min_tokens=warm_steps + 2 * steps + 20, ignore_eos=True,
                       detokenize=False, temperature=0)
    # each case its own token range: a prompt sharing blocks with an earlier case's (aborted, still
    # cached) would be mostly a prefix-cache hit and its "prefill" a short chunk
    base = 1000 + 10007 * (n_req + prompt + chunk)
    ids = lambda k, n: [(base + k * 7 + j) % 100000 + 1000 for j in range(n)]
    rids = [f"p{n_req}-{i}" for i in range(n_req)]
    for i, rid in enumerate(rids):
        engine.add_request(rid, {"prompt_token_ids": ids(i, prompt)}, p)
    for _ in range(warm_steps):
        engine.step()

    def timed_steps() -> None:
        for _ in range(steps):
            if chunk:
                rids.append(f"p{n_req}-new{len(rids)}")
                engine.add_request(rids[-1], {"prompt_token_ids": ids(len(rids) * 1009, chunk)}, p)
            engine.step()
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    wall_us = None
    if warm_steps:
        start = time.perf_counter()
        timed_steps()
        wall_us = round((time.perf_counter() - start) / steps * 1e6, 1)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        timed_steps()
    table = kernel_table(prof, steps, top)
    total = sum(r[1] for r in kernel_table(prof, steps, 10**6))
    engine.abort_request(rids)
    while engine.has_unfinished_requests():
        engine.step()
    return table, total, wall_us


CASES = {  # name: (requests, prompt, warm-up steps, new prompt per step or 0 for plain steps)
    "decode_b1_ctx512": (1, 512, 40, 0),
    "decode_b8_ctx32": (8, 32, 40, 0),
    "decode_b256_ctx1000": (256, 1000, 40, 0),
    "prefill_8x1024": (8, 1024, 0, 0),
    "decode_b64_ctx1000": (64, 1000, 40, 0),
    "mixed_b64_ctx1000_plus_1024": (64, 1000, 40, 1024),
    "decode_b224_ctx1000": (224, 1000, 40, 0),
    # 224 + the 20 arrivals of its timed and profiled steps stay within the 256 seats
    "mixed_b224_ctx1000_plus_1792": (224, 1000, 40, 1792),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--top", type=int, default=14, help="kernels listed per case")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--quantization", default="auto", choices=["auto", "fp8", "none"],
                    help="fp8: the weights quantized to FP8 at load, as `ward bench offline --quantization fp8`")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    a = ap.parse_args()
    d = write_config_dir(a.model, tempfile.mkdtemp())
    llm = LLM(model=d, load_format="dummy", dtype="bfloat16", max_model_len=4096, quantization=a.quantization,
              kv_cache_dtype=a.kv_cache_dtype)
    eng = llm.engine
    report = {}
    for name in a.cases:
        n_req, prompt, warm, chunk = CASES[name]
        steps = 10 if chunk else 1 if not warm else 30
        table, total, wall = profile_case(eng, n_req, prompt, warm, steps, chunk, a.top)
        report[name] = {"kernel_us_per_step": round(total, 1), "wall_us_per_step": wall, "top": table}
        print(f"== {name}: {total:.0f} us of kernels per step" + (f", {wall:.0f} us wall per step (unprofiled)" if wall else ""))
        for k, us, cnt in table:
            print(f"  {us:9.1f} us  x{cnt:<4d} {k}")
    precision = "".join(f"_{k}-{v}" for k, v in (("weights", a.quantization), ("kv", a.kv_cache_dtype)) if v != "auto")
    json.dump(report, open(os.path.join(os.environ.get("OUT", "."), f"gpu_profile{precision}.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
