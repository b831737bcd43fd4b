"""Run the kernel checks on the CPU inside Triton's interpreter and print their metrics as JSON.

Triton decides between compiling and interpreting when a kernel is defined, so the interpreter has to
be switched on before ``worker.kernels`` is first imported. ``tests/test_kernels.py`` therefore runs
this file in a fresh process (``TRITON_INTERPRET=1``) and asserts on the printed metrics, one test per
case. Shapes are small and dtypes float32: the interpreter executes every program in numpy.

Usage: python tests/kernels_interpreter.py [CASE ...]   (default: every case)
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernels_cpu_cases import all_case_names, run_case  # noqa: E402


def main(names: list[str]) -> int:
    results: dict[str, dict[str, object]] = {}
    for name in names or all_case_names():
        try:
            results[name] = {"metrics": run_case(name)}
        except Exception:  # reported per case; the test of that case fails with the traceback
            results[name] = {"error": traceback.format_exc()}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
