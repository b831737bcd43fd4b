"""Timing of a GPU call as the engine runs it: many calls captured in one CUDA graph, replayed."""
from __future__ import annotations

from collections.abc import Callable

import torch


def timed_us(fn: Callable[[], object], iters: int = 50) -> float:
    """Microseconds per call: ``iters`` calls captured in one CUDA graph, the median of 5 replays
    (after three eager calls and one untimed replay)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    runs = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        runs.append(start.elapsed_time(end) * 1000 / iters)
    return sorted(runs)[2]


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes a second of a device-to-device copy of ``nbytes`` (read + write counted: a copy's figure,
    which a read-only stream may exceed), timed as above; the buffers are freed before returning."""
    src, dst = (torch.empty(nbytes, dtype=torch.uint8, device="cuda") for _ in range(2))
    return 2 * nbytes / (timed_us(lambda: dst.copy_(src), iters=5) * 1e-6)
