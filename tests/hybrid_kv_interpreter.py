"""Run a tiny Gemma 3 through the engine (model runner, per-group block tables) with the Triton
attention backend, on the CPU inside Triton's interpreter, and print its greedy tokens and
transformers' as JSON: the kernels read each KV group's own table, given-back ids and stand-ins
included. ``tests/test_hybrid_kv_cache.py`` runs this in a fresh process (TRITON_INTERPRET=1).

Usage: python tests/hybrid_kv_interpreter.py
"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels

import torch  # noqa: E402

from tests.test_hybrid_kv_cache import BS, _greedy_reference, gemma3_config  # noqa: E402
from tests.test_sliding_window_kv import random_checkpoint  # noqa: E402
from tests.test_model_families import VOCAB  # noqa: E402
from worker.llm import LLM  # noqa: E402
from worker.sampling_params import SamplingParams  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    rng = random.Random(13)
    shared = [rng.randrange(VOCAB) for _ in range(14)]
    prompts = [shared + [5], shared + [9, 10]]  # the second hits the first's prefix in every group
    new = 12
    with tempfile.TemporaryDirectory() as d:
        hf = random_checkpoint(gemma3_config(), d)
        expected = [_greedy_reference(hf, p, new) for p in prompts]
        llm = LLM(model=d, device="cpu", dtype="float32", attention_backend="triton", block_size=BS,
                  num_kv_blocks=90, max_model_len=64, max_num_batched_tokens=8)
        params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
        got = [llm.generate([{"prompt_token_ids": p}], params)[0].outputs[0].token_ids for p in prompts]
        hits = llm.engine.kv.prefix_stats.hits
    print(json.dumps({"groups": llm.engine.runner.kv_layout.num_groups, "prefix_hits": hits,
                      "expected": expected, "got": [list(g) for g in got]}))
    sys.exit(0)
