"""Decode steps give attention the requests longest first: the whole engine on the Triton path (in
Triton's interpreter on the CPU) decodes the same greedy tokens as the torch reference backend."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_longest_first_decode_matches_the_torch_backend_token_for_token() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("WARD_DECODE_LONGEST_FIRST", None)
    done = subprocess.run([sys.executable, str(HERE / "decode_order_interpreter.py")], capture_output=True,
                          text=True, timeout=600, env=env, cwd=HERE.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    triton, torch_ref = report["triton"], report["torch"]
    assert triton["longest_first"] and not torch_ref["longest_first"]
    assert triton["order"] == [1, 3, 2, 0]  # the rows by falling length, as the last decode step left them
    assert triton["tokens"] == torch_ref["tokens"]
    assert all(len(t) == 6 for t in triton["tokens"])
