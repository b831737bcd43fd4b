"""CUDA graphs of the decode step over a set of padded batch sizes and context bounds.

Each graph runs the whole model for B one-token requests against the persistent input buffers
and writes its hidden states into a fixed output; replay costs one launch instead of hundreds.
A graph serves steps whose longest context is at most its bound. Attention's launch (how far the
context is split) depends on that bound, so where short contexts launch differently, a size gets a
graph for them too: a decode step over short contexts then skips the splits (and their merge) that
the model's longest context would need (``context_bounds``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

import torch

log = logging.getLogger("ward.worker.cuda_graphs")


def capture_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 256, then every 16, capped at max_batch (vLLM-like spacing)."""
    sizes = [1, 2, 4] + list(range(8, 257, 8)) + list(range(272, 1025, 16))
    sizes = [s for s in sizes if s <= max_batch]
    if not sizes or sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sorted(set(sizes))


# Steps whose contexts all fit this bound get graphs of their own where attention would launch
# differently for them (attention_config.MIN_TOKENS_PER_SPLIT: nothing this short is split). Only this
# one bound: on an H100 at batch 1 and 8, a decode layer's attention over 100-160 tokens took 4.4-5.8 us
# unsplit against 5.7-7.2 us in the splits a graph at a 4,096-token length launches, but over 600
# tokens the fewer splits that a 1,024-token bound would give were slower than the long graph's
# (8.1 against 6.2 us at batch 1; docs/performance.md, 2026-12-06).
SHORT_CONTEXT_BOUND = 256


def context_bounds(max_model_len: int, launch_key: Callable[[int], Hashable] | None) -> list[int]:
    """The context bounds one batch size gets graphs for, ascending, the last ``max_model_len``:
    ``SHORT_CONTEXT_BOUND`` too where ``launch_key(bound)`` (what a step under that bound launches)
    differs there from the model's length. Without ``launch_key`` (a backend whose launch does not
    depend on the bound) one graph, at ``max_model_len``."""
    if launch_key is None or max_model_len <= SHORT_CONTEXT_BOUND:
        return [max_model_len]
    if launch_key(SHORT_CONTEXT_BOUND) == launch_key(max_model_len):
        return [max_model_len]
    return [SHORT_CONTEXT_BOUND, max_model_len]


class DecodeGraphs:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}
        self.bounds: dict[int, list[int]] = {}  # batch size -> its context bounds, ascending
        self.pool = None
        self.sizes: list[int] = []

    def capture(self, entries: list[tuple[int, int]], forward: Callable[[int, int], torch.Tensor]) -> float:
        """Captures ``forward(B, bound)`` for each (batch size, context bound), largest first (so
        smaller ones reuse its memory)."""
        t0 = time.monotonic()
        self.pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        for entry in sorted(entries, reverse=True):
            with torch.cuda.stream(stream):
                forward(*entry)  # warm up: compiles kernels, settles allocations
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                self.outputs[entry] = forward(*entry)
            self.graphs[entry] = graph
            self.bounds.setdefault(entry[0], []).append(entry[1])
        torch.cuda.synchronize(self.device)
        for bounds in self.bounds.values():
            bounds.sort()
        self.sizes = sorted(self.bounds)
        took = time.monotonic() - t0
        log.info("captured %d decode graphs (batch %d..%d, %d context bounds at most) in %.1fs", len(entries),
                 self.sizes[0], self.sizes[-1], max(len(b) for b in self.bounds.values()), took)
        return took

    def padded_size(self, num_reqs: int) -> int | None:
        for s in self.sizes:
            if s >= num_reqs:
                return s
        return None

    def bound_for(self, size: int, max_seq_len: int) -> int:
        """The smallest context bound of ``size``'s graphs that holds ``max_seq_len`` (the largest bound,
        the model's length, holds every step)."""
        bounds = self.bounds[size]
        for bound in bounds:
            if bound >= max_seq_len:
                return bound
        return bounds[-1]

    def replay(self, size: int, bound: int) -> torch.Tensor:
        self.graphs[(size, bound)].replay()
        return self.outputs[(size, bound)]
