"""Greedy decoding of a tiny random Llama through the engine with the Triton attention backend on the
CPU (Triton's interpreter), with a small step budget so steps mix decodes and prefill chunks: mixed
steps launched in two parts (decodes with the decode tile, prefill chunks with the prefill tile) and
in one, against the torch backend. Prints JSON: each run's tokens and the most decodes a mixed step
put first.

``tests/test_mixed_attention.py`` runs this file in a fresh process with ``TRITON_INTERPRET=1``.
Usage: python tests/mixed_attention_interpreter.py
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tiny_llama import tiny_llama_dir  # noqa: E402
from worker import LLM, SamplingParams  # noqa: E402

# With 40 tokens a step: the short prompts finish their prefill first and decode while the long ones
# are still chunked in, so most steps hold both kinds.
PROMPT_LENGTHS = (70, 5, 9, 52, 3)


def run(model_dir: str, backend: str, split: bool) -> dict:
    llm = LLM(model=model_dir, attention_backend=backend, dtype="float32", max_model_len=256, enforce_eager=True,
              max_num_batched_tokens=40)
    runner = llm.engine.runner
    runner.split_mixed = split and backend == "triton"
    seen = []
    metadata = runner.metadata

    def recording(*args, **kwargs):
        meta = metadata(*args, **kwargs)
        seen.append(meta.num_decode_reqs)
        return meta

    runner.metadata = recording
    prompts = [{"prompt_token_ids": [3 + (7 * i + j) % 500 for j in range(n)]} for i, n in enumerate(PROMPT_LENGTHS)]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    tokens = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]
    return {"tokens": tokens, "split_mixed": runner.split_mixed, "most_decodes_first": max(seen, default=0),
            "mixed_steps": sum(1 for d in seen if d)}


def main() -> None:
    model_dir = tiny_llama_dir("ward-mixed-")
    report = {"torch": run(model_dir, "torch", False), "triton_split": run(model_dir, "triton", True),
              "triton_one_launch": run(model_dir, "triton", False)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
