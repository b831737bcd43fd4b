"""Decode steps give attention the requests longest first: the whole engine on the Triton path (in
Triton's interpreter on the CPU) decodes the same greedy tokens as the torch reference backend."""
from __future__ import annotations

import pytest
from interpreter_run import run_interpreter_script


def test_longest_first_decode_matches_the_torch_backend_token_for_token() -> None:
    pytest.importorskip("triton")
    report = run_interpreter_script("decode_order_interpreter.py", timeout=600, unset=("WARD_DECODE_LONGEST_FIRST",))
    triton, torch_ref = report["triton"], report["torch"]
    assert triton["longest_first"] and not torch_ref["longest_first"]
    assert triton["order"] == [1, 3, 2, 0]  # the rows by falling length, as the last decode step left them
    assert triton["tokens"] == torch_ref["tokens"]
    assert all(len(t) == 6 for t in triton["tokens"])
