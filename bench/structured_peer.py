"""The vLLM peer on Ward's structured-output workload (ward/benchmarks/structured_workload.py):
output tokens/s with the same JSON schema on every request vs without, batch 1 and 64, in the same
model directory (a shape's dummy weights beside a real tokenizer, as `ward bench offline --tokenizer`
writes it). Usage, with vLLM on PYTHONPATH and the project root beside it:
    python bench/structured_peer.py MODEL_DIR OUT.json"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ward.benchmarks import structured_workload as wl  # noqa: E402


def main(model_dir: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    llm = LLM(model=model_dir, load_format="dummy", dtype="bfloat16", max_model_len=4096, max_num_seqs=256,
              gpu_memory_utilization=0.9)
    size = len(llm.get_tokenizer())
    base = dict(max_tokens=wl.OUTPUT_TOKENS, ignore_eos=True, detokenize=False, temperature=0.0)
    variants = {"plain": SamplingParams(**base),
                "schema": SamplingParams(**base, structured_outputs=StructuredOutputsParams(json=wl.SCHEMA))}
    result = {"tokenizer_size": size}
    for batch in wl.BATCHES:
        prompts = [{"prompt_token_ids": p} for p in wl.prompts(batch, size)]
        figures = {}
        for name, params in variants.items():
            runs = []
            for _ in range(3):  # the first warms (grammar compiled, graphs captured)
                t = time.perf_counter()
                outs = llm.generate(prompts, params, use_tqdm=False)
                runs.append((time.perf_counter() - t, sum(len(o.outputs[0].token_ids) for o in outs)))
            dt, n = min(runs[1:], key=lambda r: r[0])
            figures[name] = n / dt
        result[f"batch{batch}"] = wl.summary(figures["plain"], figures["schema"])
        print(batch, json.dumps(result[f"batch{batch}"]), flush=True)
    with open(out_path, "w") as f:
        json.dump({"engine": "vllm", "workload": "structured", "results": result}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
