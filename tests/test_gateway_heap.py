"""The gateway process's heap before it serves: the start-up heap frozen, young collections rarer."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_prepare_heap_freezes_the_start_up_heap_and_raises_only_the_young_threshold() -> None:
    # gc.freeze and the thresholds are for a whole process's life: checked in a child
    code = textwrap.dedent("""
        import gc, json
        from gateway.cli import YOUNG_GC_THRESHOLD, prepare_heap
        kept = [[i] for i in range(1000)]  # a heap with something in it
        before = gc.get_threshold()
        prepare_heap()
        print(json.dumps({"before": before, "after": gc.get_threshold(), "young": YOUNG_GC_THRESHOLD,
                          "freeze_count": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["after"] == [result["young"], *result["before"][1:]]
    assert result["young"] > result["before"][0]
    assert result["freeze_count"] > 1000
    assert result["tracked"] < 100  # a collection now scans only what came after
