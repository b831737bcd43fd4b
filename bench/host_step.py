"""The engine's host work per step in steady decode, phase by phase, at large batch sizes.

    python bench/host_step.py [--batch 256 512 1024] [--steps 40] [--no-freeze]

A one-layer random Llama (hidden 64) on the CPU, so the model's own arithmetic is small and the
host's bookkeeping shows: ``--batch`` requests of 32 prompt tokens decode greedily together, and each
step's wall time is split into the scheduler's ``schedule`` and ``update_from_output``, the runner's
``launch`` (input preparation and the forward, which on a GPU only enqueues kernels) and ``collect``,
and the output processor (detokenizing and building the outputs). The heap is frozen after start-up
as the worker and ``ward bench offline`` do (``--no-freeze``: left to the collector, which then
scans it in every full collection). Prints one line per batch size.
"""
from __future__ import annotations

import argparse
import gc
import pathlib
import sys
import time
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.tiny_llama import tiny_llama_dir  # noqa: E402
from worker.llm import LLM  # noqa: E402
from worker.sampling_params import SamplingParams  # noqa: E402

PROMPT_TOKENS = 32
WARM_STEPS = 5  # the prefill and the first decodes


def _timed(obj: object, name: str, totals: dict[str, float], label: str) -> None:
    """Wraps ``obj.name`` so that its wall time adds up in ``totals[label]``."""
    inner = getattr(obj, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start

    setattr(obj, name, timed)


def measure(model_dir: str, batch: int, steps: int, freeze: bool) -> dict[str, float]:
    """Milliseconds a step: the whole step and each phase, over ``steps`` decode steps."""
    llm = LLM(model_dir, device="cpu", max_num_seqs=batch, max_num_batched_tokens=max(8192, batch * 40),
              max_model_len=512, num_kv_blocks=batch * 8 + 64, enable_prefix_caching=False)
    engine = llm.engine
    totals: dict[str, float] = defaultdict(float)
    _timed(engine.scheduler, "schedule", totals, "schedule")
    _timed(engine.scheduler, "update_from_output", totals, "update")
    _timed(engine.runner, "launch", totals, "launch")
    _timed(engine.runner, "collect", totals, "collect")
    _timed(engine.outputs, "process", totals, "outputs")
    params = SamplingParams(max_tokens=WARM_STEPS + steps + 8, ignore_eos=True, temperature=0.0)
    for i in range(batch):
        engine.add_request(f"r{i}", {"prompt_token_ids": [(i * 7 + j) % 500 + 1 for j in range(PROMPT_TOKENS)]}, params)
    for _ in range(WARM_STEPS):
        engine.step()
    if freeze:
        gc.collect()
        gc.freeze()
    totals.clear()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    elapsed = time.perf_counter() - start
    if freeze:
        gc.unfreeze()
    return {"step": elapsed / steps * 1e3, **{k: v / steps * 1e3 for k, v in totals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--no-freeze", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = tiny_llama_dir("ward-host-step-")
    for batch in args.batch:
        ms = measure(model_dir, batch, args.steps, freeze=not args.no_freeze)
        phases = ", ".join(f"{k} {v:.2f}" for k, v in ms.items() if k != "step")
        print(f"batch {batch}: step {ms['step']:.2f} ms ({phases} ms)", flush=True)


if __name__ == "__main__":
    main()
