"""bench/soak.py end to end, small: its processes start, its checks run and pass, its figures are written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from e2e_support import ROOT, clean_env


@pytest.mark.slow
def test_a_small_soak_passes_every_check_and_writes_its_figures(tmp_path):
    out = tmp_path / "soak.json"
    argv = [sys.executable, str(ROOT / "bench" / "soak.py"), "--streams", "40", "--tokens", "12",
            "--token-interval", "0.4", "--ramp", "0.5", "--waves", "2", "--rss-tolerance", "0.25", "--json", str(out)]
    done = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert all(report["checks"].values()), report["checks"]
    assert [w["peak_open"] for w in report["waves"]] == [40, 40]
    assert report["audit"]["audited_once"] == 80 and report["gateway_exit_code"] == 0
    assert report["rss_samples"] and report["gateway_cpu_s"] > 0
