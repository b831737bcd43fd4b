"""bench/host_step.py: the engine's host work per step, phase by phase, runs and adds up."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_each_batch_gets_a_line_whose_phases_fit_in_its_step() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "host_step.py"), "--batch", "4", "8", "--steps", "3"],
                         capture_output=True, text=True, check=True, timeout=300).stdout.splitlines()
    lines = [line for line in out if line.startswith("batch ")]
    assert [line.split(":")[0] for line in lines] == ["batch 4", "batch 8"]
    for line in lines:
        step = float(re.search(r"step ([0-9.]+) ms \(", line).group(1))
        phases = dict((name, float(value)) for name, value in re.findall(r"(\w+) ([0-9.]+)(?=,| ms\))", line))
        assert set(phases) == {"schedule", "update", "launch", "collect", "outputs"}
        assert 0 < sum(phases.values()) <= step * 1.05  # the phases are parts of the step
