"""Runs a test script of this folder in Triton's interpreter, in a fresh process.

Triton fixes interpreter or compiler when a kernel is defined, so a CPU test of the GPU code path needs
a process of its own with ``TRITON_INTERPRET=1``; the script prints its findings as JSON on its last line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent


def run_interpreter_script(script: str, *args: str, timeout: float = 300, unset: tuple[str, ...] = ()) -> Any:
    """The JSON of the last line ``tests/<script> args`` prints, run with the repository root first on
    PYTHONPATH (so ``worker`` is this checkout's) and without the environment variables in ``unset``.
    AssertionError with the end of its stderr when it fails or prints nothing."""
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name in unset:
        env.pop(name, None)
    done = subprocess.run([sys.executable, str(TESTS_DIR / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip(), f"{script} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])
