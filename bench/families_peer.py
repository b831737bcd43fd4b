"""The vLLM peer on the model-family anchors: the Gemma 3 27B and Mixtral 8x7B shapes
(ward/benchmarks/models.py) with dummy bf16 weights, batch-1 decode (512-token prompt, 256 tokens)
and the mixed-length run (256 requests, in and out uniform in 100..1,024), as
`ward bench offline --model SHAPE --workloads batch1,mixed` measures them on the same card.
Usage, with vLLM on PYTHONPATH and the project root beside it:
    python bench/families_peer.py SHAPE OUT.json"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ward.benchmarks.models import SHAPES, prompt_id_limit, write_config_dir  # noqa: E402


def main(shape: str, out_path: str) -> None:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    model_dir = write_config_dir(shape, tempfile.mkdtemp(prefix=f"{shape}-"))
    top = prompt_id_limit(SHAPES[shape]["vocab_size"])
    t0 = time.perf_counter()
    llm = LLM(model=model_dir, load_format="dummy", dtype="bfloat16", skip_tokenizer_init=True, max_model_len=4096,
              gpu_memory_utilization=0.9, seed=0)
    result = {"device": torch.cuda.get_device_name(0), "shape": shape, "init_s": round(time.perf_counter() - t0, 1)}
    rng = random.Random(0)

    def params(n: int) -> SamplingParams:
        return SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False, temperature=0.0)

    def run(prompts, sampling) -> tuple[float, int]:
        torch.cuda.synchronize()
        t = time.perf_counter()
        outs = llm.generate(prompts, sampling, use_tqdm=False)
        torch.cuda.synchronize()
        return time.perf_counter() - t, sum(len(o.outputs[0].token_ids) for o in outs)

    run([TokensPrompt(prompt_token_ids=[rng.randrange(1000, top) for _ in range(32)]) for _ in range(8)], params(16))
    one = [TokensPrompt(prompt_token_ids=[rng.randrange(1000, top) for _ in range(512)])]
    a = min(run(one, params(1))[0] for _ in range(3))
    b = min(run(one, params(257))[0] for _ in range(3))
    result["batch1"] = {"tok_s": round(256 / (b - a), 1), "step_ms": round(1000 * (b - a) / 256, 3)}
    print("batch1", result["batch1"], flush=True)
    rng2 = random.Random(1)
    prompts, sampling = [], []
    for _ in range(256):
        prompts.append(TokensPrompt(prompt_token_ids=[rng2.randrange(1000, top) for _ in range(rng2.randint(100, 1024))]))
        sampling.append(params(rng2.randint(100, 1024)))
    dt, n = run(prompts, sampling)
    result["mixed"] = {"out_tok_s": round(n / dt, 1), "seconds": round(dt, 2), "out_tokens": n}
    print("mixed", result["mixed"], flush=True)
    with open(out_path, "w") as f:
        json.dump({"engine": "vllm", "results": result}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
