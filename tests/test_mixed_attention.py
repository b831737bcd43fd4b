"""Mixed steps (decodes beside prefill chunks) launch attention in two parts on the Triton path: the
one-token requests go first and take the decode tile, the prefill chunks the prefill tile. The whole
engine in Triton's interpreter decodes the same greedy tokens either way as the torch backend."""
from __future__ import annotations

import pytest
from interpreter_run import run_interpreter_script

from worker.runner.model_runner import ModelRunner


def test_a_mixed_step_puts_its_one_token_requests_first_in_their_own_order() -> None:
    scheduled = {"a": 30, "b": 1, "c": 5, "d": 1, "e": 1}
    assert ModelRunner._decodes_first(list("abcde"), scheduled) == (["b", "d", "e", "a", "c"], 3)


def test_a_step_of_one_kind_keeps_its_order() -> None:
    assert ModelRunner._decodes_first(["x", "y"], {"x": 1, "y": 1}) == (["x", "y"], 0)
    assert ModelRunner._decodes_first(["x", "y"], {"x": 9, "y": 4}) == (["x", "y"], 0)


def test_mixed_steps_in_two_launches_match_one_launch_and_the_torch_backend() -> None:
    pytest.importorskip("triton")
    report = run_interpreter_script("mixed_attention_interpreter.py", timeout=600,
                                    unset=("WARD_MIXED_ATTENTION_SPLIT",))
    split, one, torch_ref = report["triton_split"], report["triton_one_launch"], report["torch"]
    assert split["split_mixed"] and not one["split_mixed"]
    assert split["mixed_steps"] >= 2 and split["most_decodes_first"] >= 2  # the runs did mix decodes and prefill
    assert one["mixed_steps"] == 0
    assert split["tokens"] == torch_ref["tokens"] == one["tokens"]
    assert all(len(t) == 8 for t in split["tokens"])
