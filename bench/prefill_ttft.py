"""A lone request's prefill in the whole model (the serving c=1 row's first token, without the
gateway): one engine, fresh random prompts of --prompt tokens, max_tokens 1, one request at a time,
with the prefill attention tile and the greedy argmax switched in-process between variants, the
variants alternated for --rounds rounds so drift hits each alike. A script, not a test.
Usage: python bench/prefill_ttft.py [--model llama-3.1-8b] [--prompt 1024] [--requests 10] [--rounds 3]"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import worker.kernels.attention_config as attention_config
import worker.runner.model_runner as model_runner
from ward.benchmarks.models import write_config_dir
from ward.benchmarks.offline import OfflineBench
from worker import LLM

# (name, prefill tile or None for the built-in one, Triton argmax on)
VARIANTS = [
    ("built-in tile, Triton argmax", None, True),
    ("128:64:8:2 tile, Triton argmax", (128, 64, 8, 2), True),
    ("built-in tile, torch argmax", None, False),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    llm = LLM(model=write_config_dir(args.model, tempfile.mkdtemp(prefix="ward-ttft-")), load_format="dummy",
              dtype="bfloat16", max_model_len=4096, max_num_batched_tokens=16384)
    bench = OfflineBench(llm)
    bench.warmup()
    first_ms = 1000 * bench.run(bench.prompts(1, args.prompt), bench.params(1))[0]
    print(json.dumps({"first_request_ms": round(first_ms, 2)}), flush=True)
    times: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    for _ in range(args.rounds):
        for name, tile, triton_argmax in VARIANTS:
            attention_config.PREFILL_TILE = tile
            model_runner.TRITON_ARGMAX = triton_argmax
            bench.run(bench.prompts(1, args.prompt), bench.params(1))  # a first launch of this variant's shapes
            times[name] += [1000 * bench.run(bench.prompts(1, args.prompt), bench.params(1))[0]
                            for _ in range(args.requests)]
    report = {name: {"p50_ms": round(statistics.median(t), 2), "min_ms": round(min(t), 2), "n": len(t)}
              for name, t in times.items()}
    for name, row in report.items():
        print(json.dumps({"variant": name, **row}), flush=True)
    print(json.dumps({"prefill_ttft": report, "prompt": args.prompt}))


if __name__ == "__main__":
    main()
