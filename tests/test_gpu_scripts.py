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


def _gemv_logs(folder: Path, table: tuple[float, float], proposal: tuple[float, float], rounds: int = 2) -> None:
    for r in range(1, rounds + 1):
        for side, (tok_s, mean_ms) in (("table", table), ("proposal", proposal)):
            (folder / f"gemv_{side}_r{r}.txt").write_text(
                f"startup 9.1 s {{}}\nlatency {{\"mean_ms\": {mean_ms}, \"runs_ms\": []}}\n"
                f"batch1 {{\"tok_s\": {tok_s}, \"step_ms\": 4.5}}\n")


@pytest.mark.parametrize(("proposal", "verdict"), [
    ((228.0, 619.0), "proposal"),  # faster at batch 1, latency no slower
    ((228.0, 640.0), "table"),  # faster at batch 1 but the latency test slowed by 3%
    ((220.0, 600.0), "table"),  # slower at batch 1
])
def test_the_gemv_verdict_names_the_plans_that_won_every_round(tmp_path: Path, proposal, verdict) -> None:
    import subprocess
    import sys

    _gemv_logs(tmp_path, (221.0, 620.0), proposal)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gemv_verdict.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == verdict
    assert len(out) == 3 and out[1].startswith("round 1: table batch1 221.0")


def test_the_gemv_verdict_keeps_the_table_without_complete_rounds(tmp_path: Path) -> None:
    import subprocess
    import sys

    _gemv_logs(tmp_path, (221.0, 620.0), (228.0, 619.0), rounds=1)
    (tmp_path / "gemv_proposal_r1.txt").write_text("Traceback: the run failed\n")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gemv_verdict.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "table"


@pytest.mark.parametrize(("candidate", "verdict"), [
    ((30.4, 10100.0, 30.6, 10150.0), "on"),  # ahead on both workloads in both rounds
    ((30.4, 10100.0, 29.0, 10150.0), "off"),  # 1,024/128 behind by 5% in round 2
    ((30.0, 9900.0, 30.1, 9950.0), "off"),  # mixed behind overall
])
def test_the_throughput_verdict_wants_the_candidate_ahead_on_every_workload(tmp_path: Path, candidate, verdict) -> None:
    import subprocess
    import sys

    for stem, figures in (("variant_off", (30.0, 10000.0, 30.2, 10020.0)), ("variant_on", candidate)):
        for r in (1, 2):
            req_s, tok_s = figures[2 * (r - 1):2 * r]
            (tmp_path / f"{stem}_r{r}.txt").write_text(
                f"offline_1024_128 {{\"req_s\": {req_s}}}\nmixed {{\"out_tok_s\": {tok_s}}}\n")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gemv_verdict.py"), str(tmp_path), "variant_off",
                          "variant_on", "--throughput", "offline_1024_128:req_s,mixed:out_tok_s"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == verdict
    assert out[1] == (f"round 1: off offline_1024_128 req_s 30.0, mixed out_tok_s 10000.0; "
                      f"on offline_1024_128 req_s {candidate[0]}, mixed out_tok_s {candidate[1]}")


def test_the_verdict_judges_any_pair_of_alternated_steps(tmp_path: Path) -> None:
    import subprocess
    import sys

    for r in (1, 2):  # the norm step's A/B: WARD_NORM_GEMV=0 against 1
        for stem, tok_s, mean_ms in (("norm0", 176.5, 742.0), ("norm1", 181.0, 730.0)):
            (tmp_path / f"{stem}_r{r}.txt").write_text(
                f"latency {{\"mean_ms\": {mean_ms}}}\nbatch1 {{\"tok_s\": {tok_s}}}\n")
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gemv_verdict.py"), str(tmp_path), "norm0",
                          "norm1"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "norm1"
    assert out[1] == "round 1: norm0 batch1 176.5 tok/s latency 742.0 ms; norm1 181.0 tok/s 730.0 ms"


@pytest.mark.parametrize(("args", "message"), [
    (["offline", "--model", "no-such-model"], "is neither a model directory nor a known model name"),
    (["offline", "--workloads", "latency,latancy"], "unknown workload 'latancy'"),
    (["hf-mixed", "--model", "no-such-shape"], "hf-mixed takes a shape"),
    (["hf", "--device", "gpu"], "--device must be auto, cpu or cuda"),
])
def test_bench_refuses_bad_arguments_before_measuring_anything(tmp_path: Path, args, message) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ward", "bench", *args, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
