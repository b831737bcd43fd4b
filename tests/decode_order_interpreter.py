"""Greedy decoding of a tiny random Llama through the engine with the Triton attention backend on the
CPU (Triton's interpreter), where decode steps hand attention the requests longest first, against
the torch backend. Prints JSON: both backends' tokens and the last decode step's request order.

``tests/test_decode_order.py`` runs this file in a fresh process with ``TRITON_INTERPRET=1``.
Usage: python tests/decode_order_interpreter.py
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

PROMPT_LENGTHS = (5, 60, 17, 33)  # rows in this order; longest first is 1, 3, 2, 0


def main() -> None:
    model_dir = tiny_llama_dir("ward-order-")
    prompts = [{"prompt_token_ids": list(range(3, 3 + n))} for n in PROMPT_LENGTHS]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    report = {}
    for backend in ("torch", "triton"):
        llm = LLM(model=model_dir, attention_backend=backend, dtype="float32", max_model_len=256, enforce_eager=True)
        runner = llm.engine.runner
        report[backend] = {
            "tokens": [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)],
            "longest_first": runner.longest_first,
            "order": runner.buffers.request_order[: len(prompts)].tolist(),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
