"""CUDA graphs of the decode step over a set of padded batch sizes.

Each graph runs the whole model for B one-token requests against the persistent input buffers
and writes its hidden states into a fixed output; replay costs one launch instead of hundreds.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger("ward.worker.cuda_graphs")


def capture_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 256, then every 16, capped at max_batch (vLLM-like spacing)."""
    sizes = [1, 2, 4] + list(range(8, 257, 8)) + list(range(272, 1025, 16))
    sizes = [s for s in sizes if s <= max_batch]
    if not sizes or sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sorted(set(sizes))


class DecodeGraphs:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool = None
        self.sizes: list[int] = []

    def capture(self, sizes: list[int], forward: Callable[[int], torch.Tensor]) -> float:
        """Captures ``forward(B)`` for each size, largest first (so smaller ones reuse its memory)."""
        t0 = time.monotonic()
        self.pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        for size in sorted(sizes, reverse=True):
            with torch.cuda.stream(stream):
                forward(size)  # warm up: compiles kernels, settles allocations
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                self.outputs[size] = forward(size)
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)
        self.sizes = sorted(self.graphs)
        took = time.monotonic() - t0
        log.info("captured %d decode graphs (batch %d..%d) in %.1fs", len(sizes), self.sizes[0], self.sizes[-1], took)
        return took

    def padded_size(self, num_reqs: int) -> int | None:
        for s in self.sizes:
            if s >= num_reqs:
                return s
        return None

    def replay(self, size: int) -> torch.Tensor:
        self.graphs[size].replay()
        return self.outputs[size]
