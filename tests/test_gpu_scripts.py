"""The GPU scripts are run where device time is scarce: every `ward bench offline` line they hold
must parse with ward bench's own arguments, name a known shape and known workloads, before a GPU
ever sees it."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from ward.bench import WORKLOADS, add_arguments
from ward.benchmarks.models import SHAPES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_round2.sh"


def _run_lines() -> list[list[str]]:
    lines = []
    for line in SCRIPT.read_text().splitlines():
        m = re.search(r"\brun (\w+) (--.*?)(?: ;;|$)", line)
        if m and "local name" not in line:
            lines.append(shlex.split(m.group(2).replace(";;", "")))
    return lines


def test_the_script_has_its_steps():
    assert len(_run_lines()) == 11  # bf16 fp8 fp8kv awq awq70b gemma3 mixtral qwen3 qwen3fp8 structured tp2


@pytest.mark.parametrize("args", _run_lines(), ids=lambda a: " ".join(a)[:60])
def test_every_bench_line_parses_with_known_shapes_and_workloads(args):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    ns = parser.parse_args(["offline", *args])
    assert ns.model in SHAPES, ns.model
    assert set(ns.workloads.split(",")) <= set(WORKLOADS) | {"structured"}


def test_the_decode_fusion_script_runs_a_known_offline_bench():
    import ast

    tree = ast.parse((ROOT / "bench" / "decode_fusion.py").read_text())
    args = next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "OFFLINE_ARGS")
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    ns = parser.parse_args([*args, "--out", "x"])
    assert ns.suite == "offline" and ns.model in SHAPES
    assert set(ns.workloads.split(",")) == {"latency", "batch1"} <= set(WORKLOADS)
