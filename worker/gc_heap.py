"""The worker's long-lived heap kept out of the garbage collector's way, and the collector's pauses
measured.

A started worker holds some 370,000 objects the collector tracks (the model's modules, the tokenizer,
torch, Triton, transformers and gRPC internals), all alive as long as the process. A full collection
scans every one of them while the GIL is held: 166-207 ms on a 2-core CPU box, during which no step
is launched and no token is sent (bench/worker_gc.py). Frozen after start-up (``gc.freeze``), they are no longer scanned; only
what serving allocates is. The gateway does the same for its own heap (gateway/cli.py).
"""
from __future__ import annotations

import atexit
import gc
import logging
import os
import time

from prometheus_client import CollectorRegistry, Gauge, Histogram

log = logging.getLogger("ward.worker.gc")

# WARD_GC_FREEZE=0 leaves the heap unfrozen (to measure what the freeze saves).
FREEZE = os.environ.get("WARD_GC_FREEZE", "1") != "0"
# WARD_GC_THRESHOLD="G0,G1,G2": the collector's thresholds from start-up on (unset: Python's own,
# 700,10,10). Under 256 streams a GPU worker's serving process ran three full collections of about
# 70 ms each a level (docs/performance.md); a larger G2 makes them rarer. Opt-in until timed there.
THRESHOLD_ENV = "WARD_GC_THRESHOLD"
_PAUSES = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def collector_thresholds(value: str | None) -> tuple[int, int, int] | None:
    """The thresholds a WARD_GC_THRESHOLD value names (None for unset or empty); ValueError otherwise."""
    if value is None or not value.strip():
        return None
    parts = value.split(",")
    try:
        numbers = tuple(int(part) for part in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or min(numbers) < 1:
        raise ValueError(f"{THRESHOLD_ENV} must be three positive integers G0,G1,G2 (Python's own are "
                         f"700,10,10), got {value!r}")
    return numbers  # type: ignore[return-value]


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive into the collector's permanent generation. Call
    once a process has built what it keeps for its whole life; returns the number of objects frozen
    (0 with WARD_GC_FREEZE=0). Applies WARD_GC_THRESHOLD first, when set (ValueError when malformed)."""
    thresholds = collector_thresholds(os.environ.get(THRESHOLD_ENV))
    if thresholds is not None:
        gc.set_threshold(*thresholds)
        log.info("garbage-collection thresholds set to %s", thresholds)
    if not FREEZE:
        return 0
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    # Frozen objects are never collected, not even at exit, where nanobind (Triton's bindings) then
    # reports them as a wall of "leaked" lines that buries the worker's own last words in its log.
    atexit.register(gc.unfreeze)
    frozen = gc.get_freeze_count()
    log.info("froze %d start-up objects out of the collector's scans (%.0f ms)", frozen,
             1000 * (time.perf_counter() - started))
    return frozen


class GcPauses:
    """Each collection's pause, by generation, in ``ward_worker_gc_pause_seconds``, and the frozen
    heap's size in ``ward_worker_gc_frozen_objects``, on ``registry``. ``close()`` stops recording."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pauses = Histogram("ward_worker_gc_pause_seconds",
                                "Garbage-collection pauses of the worker's serving process, by generation.",
                                ["generation"], buckets=_PAUSES, registry=registry)
        self.frozen = Gauge("ward_worker_gc_frozen_objects",
                            "Objects moved out of the collector's scans after start-up.", registry=registry)
        self.frozen.set(gc.get_freeze_count())
        self._by_generation = [self.pauses.labels(str(g)) for g in range(3)]
        self._started = 0.0
        gc.callbacks.append(self._on_collection)

    def _on_collection(self, phase: str, info: dict) -> None:
        # The collector runs under the GIL and never nests, so one start time is enough.
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)

    def close(self) -> None:
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)
