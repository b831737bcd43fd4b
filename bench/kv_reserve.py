"""Admission with and without KV room kept for the running requests (``reserved_output_tokens``),
on a pool too small for every request at once: wall time, steps, tokens computed (a preempted
request's prompt is computed again), preemptions, and whether the outputs are the same.

    python bench/kv_reserve.py [--model smollm2-135m-instruct] [--device cpu] [--requests 32]
        [--prompt 256] [--output 64] [--blocks 256] [--reserve 0 256] [--rounds 2] [--json OUT]

A script that prints figures, not a test. On a GPU: --device cuda --model a shape's directory.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from worker import LLM, SamplingParams  # noqa: E402


def measure(args: argparse.Namespace, reserve: int, prompts: list[dict]) -> tuple[dict, list[list[int]]]:
    llm = LLM(model=args.model, device=args.device, num_kv_blocks=args.blocks, max_num_seqs=args.max_num_seqs,
              max_model_len=args.prompt + args.output + 16, reserved_output_tokens=reserve)
    params = SamplingParams(temperature=0, max_tokens=args.output, min_tokens=args.output, ignore_eos=True,
                            detokenize=False)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    engine = llm.engine
    engine.reset_counters()
    before = engine.stats()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    seconds = time.perf_counter() - t0
    s = engine.stats()
    row = {"reserved_output_tokens": reserve, "seconds": round(seconds, 2),
           "out_tok_s": round(len(prompts) * args.output / seconds, 1),
           "steps": s.num_steps - before.num_steps, "tokens_computed": s.num_tokens_computed - before.num_tokens_computed,
           "preemptions": s.num_preemptions, "reserve_waits": s.num_reserve_waits}
    return row, [o.outputs[0].token_ids for o in outs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--output", type=int, default=64)
    p.add_argument("--blocks", type=int, default=256, help="KV blocks of 16 tokens (the default holds 12 of 32)")
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--reserve", type=int, nargs="+", default=[0, 256])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    rng = random.Random(0)
    prompts = [{"prompt_token_ids": [rng.randrange(1000, 40000) for _ in range(args.prompt)]} for _ in range(args.requests)]
    rows, outputs = [], {}
    for round_ in range(args.rounds):
        for reserve in args.reserve:
            row, outputs[reserve] = measure(args, reserve, prompts)
            row["round"] = round_
            rows.append(row)
            print(json.dumps(row), flush=True)
    same = len({json.dumps(o) for o in outputs.values()}) == 1
    print(f"outputs identical across settings: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpus": os.cpu_count(), "rows": rows, "outputs_identical": same}, f, indent=1)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
