"""The vLLM peer on a model shape of ``ward/benchmarks/models.py`` (dummy weights), with the
workloads ``ward bench offline`` runs on the same card: latency (batch 8, 32 in / 128 out, mean of
5), batch-1 decode (512-token prompt, 256 tokens), 1,000 x 256/256 and 1,000 x 1,024/128, and the
mixed-length run (256 requests, in and out uniform in 100..1,024). The family anchors (Gemma 3 27B,
Mixtral 8x7B, Qwen3-30B-A3B) take batch 1 and mixed; ``--quantization fp8`` and
``--kv-cache-dtype fp8`` give the peer's rows in the precision Ward's same flags select (FP8 rows are
reported apart from the bf16 comparison).
Usage, with vLLM on PYTHONPATH and the project root beside it:
    python bench/families_peer.py SHAPE OUT.json [--workloads batch1,mixed] [--quantization fp8]
        [--kv-cache-dtype fp8]"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ward.benchmarks.models import SHAPES, prompt_id_limit, write_config_dir  # noqa: E402

WORKLOADS = ("latency", "batch1", "offline_256_256", "offline_1024_128", "mixed")


def main(shape: str, out_path: str, workloads: list[str], quantization: str | None, kv_cache_dtype: str) -> None:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    model_dir = write_config_dir(shape, tempfile.mkdtemp(prefix=f"{shape}-"))
    top = prompt_id_limit(SHAPES[shape]["vocab_size"])
    t0 = time.perf_counter()
    llm = LLM(model=model_dir, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True, max_model_len=4096,
              gpu_memory_utilization=0.9, seed=0, quantization=quantization, kv_cache_dtype=kv_cache_dtype)
    result = {"device": torch.cuda.get_device_name(0), "shape": shape, "quantization": quantization,
              "kv_cache_dtype": kv_cache_dtype, "init_s": round(time.perf_counter() - t0, 1)}
    rng = random.Random(0)

    def prompts(n: int, length: int) -> list:
        return [TokensPrompt(prompt_token_ids=[rng.randrange(1000, top) for _ in range(length)]) for _ in range(n)]

    def params(n: int) -> SamplingParams:
        return SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False, temperature=0.0)

    def run(batch, sampling) -> tuple[float, int]:
        torch.cuda.synchronize()
        t = time.perf_counter()
        outs = llm.generate(batch, sampling, use_tqdm=False)
        torch.cuda.synchronize()
        return time.perf_counter() - t, sum(len(o.outputs[0].token_ids) for o in outs)

    run(prompts(8, 32), params(16))
    if "latency" in workloads:
        times = [run(prompts(8, 32), params(128))[0] for _ in range(5)]
        result["latency"] = {"mean_ms": round(1000 * sum(times) / len(times), 1)}
        print("latency", result["latency"], flush=True)
    if "batch1" in workloads:
        one = prompts(1, 512)
        a = min(run(one, params(1))[0] for _ in range(3))
        b = min(run(one, params(257))[0] for _ in range(3))
        result["batch1"] = {"tok_s": round(256 / (b - a), 1), "step_ms": round(1000 * (b - a) / 256, 3)}
        print("batch1", result["batch1"], flush=True)
    for name, n_in, n_out in (("offline_256_256", 256, 256), ("offline_1024_128", 1024, 128)):
        if name in workloads:
            dt, n = run(prompts(1000, n_in), params(n_out))
            result[name] = {"req_s": round(1000 / dt, 2), "out_tok_s": round(n / dt, 1), "seconds": round(dt, 2)}
            print(name, result[name], flush=True)
    if "mixed" in workloads:
        rng2 = random.Random(1)
        batch, sampling = [], []
        for _ in range(256):
            length = rng2.randint(100, 1024)
            batch.append(TokensPrompt(prompt_token_ids=[rng2.randrange(1000, top) for _ in range(length)]))
            sampling.append(params(rng2.randint(100, 1024)))
        dt, n = run(batch, sampling)
        result["mixed"] = {"out_tok_s": round(n / dt, 1), "seconds": round(dt, 2), "out_tokens": n}
        print("mixed", result["mixed"], flush=True)
    with open(out_path, "w") as f:
        json.dump({"engine": "vllm", "results": result}, f, indent=1)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("out")
    parser.add_argument("--workloads", default="batch1,mixed", help=f"comma-separated, of {', '.join(WORKLOADS)}")
    parser.add_argument("--quantization", default=None, help="the peer's quantization (fp8: FP8 at load)")
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto (the model's) or fp8")
    args = parser.parse_args(argv)
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)} (known: {', '.join(WORKLOADS)})")
    return args


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    main(args.shape, args.out, args.workloads.split(","), args.quantization, args.kv_cache_dtype)
