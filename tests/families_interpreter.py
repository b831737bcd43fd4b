"""Run each model family through its CUDA code path (Triton attention, norms, rotary, fused MoE) on
the CPU inside Triton's interpreter, against transformers, and print the relative errors as JSON.

Triton picks interpreter or compiler when a kernel is defined, so ``tests/test_model_families.py``
runs this file in a fresh process with ``TRITON_INTERPRET=1`` set first.

Usage: python tests/families_interpreter.py FAMILY [FAMILY ...]
"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels

import torch  # noqa: E402

from tests.paged_driver import PagedDriver, rel_err  # noqa: E402
from tests.test_model_families import FAMILIES, VOCAB, _random_hf, hf_logits  # noqa: E402
from worker.attention.triton_backend import TritonBackend  # noqa: E402
from worker.kernels import model_ops  # noqa: E402
from worker.kernels import rotary_cache  # noqa: E402
from worker.model.loader import build_model, load_weights  # noqa: E402
from worker.model.spec import load_spec  # noqa: E402


def run(name: str) -> dict:
    """The relative error against transformers over a prefill and three decode steps, the layers, and
    how many cache writes took the q/k head norms with them (rotary_cache.HeadNorms)."""
    torch.manual_seed(0)
    hf = _random_hf(FAMILIES[name]())
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        spec = load_spec(d)
        ours = build_model(spec, TritonBackend(), torch.device("cpu"), torch.float32, 64, model_ops)
        load_weights(ours, spec, d)
    fused = []
    original = rotary_cache.rotary_and_cache

    def counted(*args, **kwargs):
        fused.append(len(args) > 9 and args[9] is not None or kwargs.get("head_norms") is not None)
        return original(*args, **kwargs)

    rotary_cache.rotary_and_cache = counted
    rng = random.Random(11)
    tokens = [rng.randrange(VOCAB) for _ in range(22)]  # distinct tokens: the rotary's positions matter
    drv = PagedDriver(ours, spec, num_blocks=8, block_size=16)
    got = [drv.step([("a", tokens[:19], 0)])[0]] + [drv.step([("a", tokens[p : p + 1], p)])[0] for p in range(19, 22)]
    rotary_cache.rotary_and_cache = original
    return {"rel_err": rel_err(torch.cat(got), hf_logits(hf, tokens)), "layers": spec.num_layers,
            "head_norms_fused": sum(fused), "cache_writes": len(fused)}


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and steady on a busy machine
    print(json.dumps({name: run(name) for name in sys.argv[1:]}))
