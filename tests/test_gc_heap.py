"""The worker's start-up heap frozen out of the collector's scans, and its pauses as metrics."""
from __future__ import annotations

import gc
import json
import pathlib
import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry, generate_latest

from worker.gc_heap import GcPauses

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _sample(registry: CollectorRegistry, line_start: str) -> float:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not exposed")


def test_each_collection_is_recorded_by_generation_until_closed() -> None:
    registry = CollectorRegistry()
    pauses = GcPauses(registry)
    try:
        before = _sample(registry, 'ward_worker_gc_pause_seconds_count{generation="2"}')
        gc.collect()
        gc.collect(0)
        assert _sample(registry, 'ward_worker_gc_pause_seconds_count{generation="2"}') == before + 1
        assert _sample(registry, 'ward_worker_gc_pause_seconds_count{generation="0"}') >= 1
        assert _sample(registry, 'ward_worker_gc_pause_seconds_sum{generation="2"}') > 0
        assert _sample(registry, "ward_worker_gc_frozen_objects") == gc.get_freeze_count()
    finally:
        pauses.close()
    assert pauses._on_collection not in gc.callbacks
    gc.collect()
    assert _sample(registry, 'ward_worker_gc_pause_seconds_count{generation="2"}') == before + 1


def _freeze_in_a_child(env_value: str, threshold: str | None = None, expect_ok: bool = True) -> str:
    # gc.freeze is for a whole process's life: checked in a child, not in the test process
    code = textwrap.dedent("""
        import gc, json
        from worker.gc_heap import freeze_startup_heap
        kept = [[i] for i in range(1000)]  # a heap with something in it
        frozen = freeze_startup_heap()
        print(json.dumps({"frozen": frozen, "freeze_count": gc.get_freeze_count(), "tracked": len(gc.get_objects()),
                          "threshold": gc.get_threshold()}))
    """)
    env = {"PATH": "/usr/bin:/bin", "WARD_GC_FREEZE": env_value, "PYTHONPATH": str(ROOT)}
    if threshold is not None:
        env["WARD_GC_THRESHOLD"] = threshold
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    if not expect_ok:
        assert done.returncode != 0
        return done.stderr
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_the_start_up_heap_is_frozen_out_of_full_collections() -> None:
    result = json.loads(_freeze_in_a_child("1"))
    assert result["frozen"] == result["freeze_count"] > 1000
    assert result["tracked"] < 100  # a full collection now scans only what came after


def test_ward_gc_freeze_0_leaves_the_heap_to_the_collector() -> None:
    result = json.loads(_freeze_in_a_child("0"))
    assert result["frozen"] == result["freeze_count"] == 0 and result["tracked"] > 1000


def test_ward_gc_threshold_sets_the_collectors_thresholds_at_start_up() -> None:
    default = json.loads(_freeze_in_a_child("1"))
    assert tuple(default["threshold"]) == gc.get_threshold()  # unset: Python's own, untouched
    result = json.loads(_freeze_in_a_child("1", "5000,20,100"))
    assert tuple(result["threshold"]) == (5000, 20, 100) and result["frozen"] > 1000
    assert tuple(json.loads(_freeze_in_a_child("0", "700,10,50"))["threshold"]) == (700, 10, 50)


def test_a_malformed_ward_gc_threshold_stops_start_up_with_a_clear_error() -> None:
    for bad in ("700,10", "700,10,ten", "700,0,10", "-1,10,10"):
        stderr = _freeze_in_a_child("1", bad, expect_ok=False)
        assert "ValueError: WARD_GC_THRESHOLD must be three positive integers" in stderr, stderr


def test_a_frozen_heap_is_released_at_exit_so_the_log_ends_with_the_workers_own_words() -> None:
    """Objects left frozen at exit made nanobind (Triton's bindings) print some thirty "leaked ..."
    lines after every worker's last message."""
    child = textwrap.dedent(
        """
        import sys

        import triton.language  # noqa: F401  (nanobind objects alive at exit)

        from worker.gc_heap import freeze_startup_heap

        assert freeze_startup_heap() > 1000
        print("ward worker: the last line", file=sys.stderr)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "WARD_GC_FREEZE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "ward worker: the last line"
    assert "leaked" not in done.stderr
