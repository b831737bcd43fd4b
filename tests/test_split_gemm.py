"""The split-K GEMM's plans, input checks and workspace (plain Python), and its numerics on a GPU.

Its numerics on the CPU run in Triton's interpreter with the other kernel cases (``split_gemm_*`` in
tests/kernels_cpu_cases.py); its sm_90 build is checked by tests/kernels_compile.py.
"""
from __future__ import annotations

import pytest
import torch

from worker.kernels.errors import KernelInputError
from worker.kernels.split_gemm_config import (
    MAX_ROWS,
    MAX_SPLIT_K,
    MIN_ROWS,
    ROW_BUCKETS,
    SplitGemmPlan,
    choose_plan,
    k_per_split,
    parse_plan_overrides,
    row_bucket,
    rule_plan,
)

LLAMA_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def test_the_rule_splits_the_narrow_projections_to_fill_the_card() -> None:
    # 256 rows in 128-row tiles: o_proj and down_proj have 64 tiles for 132 SMs, two splits fill 128
    assert choose_plan(256, *LLAMA_8B["o"], 132).split_k == 2
    assert choose_plan(256, *LLAMA_8B["down"], 132).split_k == 2
    # qkv's 96 tiles fill a wave best four times over (384 of 396 seats), gate_up's 448 twice
    assert choose_plan(256, *LLAMA_8B["qkv"], 132).split_k == 4
    assert choose_plan(256, *LLAMA_8B["gate_up"], 132).split_k == 2
    # 64 rows or fewer take 64-row tiles in one warpgroup; a grid that fills the card is not split
    small = choose_plan(40, *LLAMA_8B["down"], 132)
    assert (small.block_m, small.num_warps, small.split_k) == (64, 4, 4)  # 32 tiles x 4 = 128
    assert choose_plan(512, 8192, 4096, 132).split_k == 1  # 4 x 64 = 256 tiles: 97% of two waves
    # no split shorter than MIN_K_PER_SPLIT inputs
    assert choose_plan(256, 4096, 1536, 132).split_k == 1


@pytest.mark.parametrize("rows", [MIN_ROWS, 64, 65, 200, 256, 300, MAX_ROWS])
@pytest.mark.parametrize(("n", "k"), [*LLAMA_8B.values(), (100, 60), (5120, 13824), (1024, 4096)])
def test_every_split_has_work_and_together_they_cover_k(rows: int, n: int, k: int) -> None:
    plan = choose_plan(rows, n, k, 132)
    per = k_per_split(k, plan)
    assert 1 <= plan.split_k <= MAX_SPLIT_K and per % plan.block_k == 0
    assert per * plan.split_k >= k > per * (plan.split_k - 1)
    assert plan.block_m >= 64 and plan.block_m in (64, 128)


def test_rows_fall_in_buckets_and_past_the_largest_are_refused() -> None:
    assert [row_bucket(r) for r in (9, 64, 65, 128, 129, 512)] == [64, 64, 128, 128, 256, 512]
    with pytest.raises(ValueError, match="at most 512"):
        row_bucket(513)


def test_plan_overrides_parse_and_refuse_what_they_cannot_launch(monkeypatch) -> None:
    from worker.kernels import split_gemm_config as config

    plans = parse_plan_overrides("4096x14336@256=128:128:64:8:4:3; 4096x4096@64=64:64:128:4:3:2")
    assert plans == {(4096, 14336, 256): SplitGemmPlan(128, 128, 64, 8, 4, 3),
                     (4096, 4096, 64): SplitGemmPlan(64, 64, 128, 4, 3, 2)}
    monkeypatch.setattr(config, "PLAN_OVERRIDES", plans)
    assert config.choose_plan(200, 4096, 14336, 132) == SplitGemmPlan(128, 128, 64, 8, 4, 3)  # 200 is in bucket 256
    assert config.choose_plan(100, 4096, 14336, 132) == rule_plan(100, 4096, 14336, 132)  # another bucket
    for bad in ("4096x4096=64:64:64:4:3:2", "4096x4096@100=64:64:64:4:3:2", "4096x4096@64=48:64:64:4:3:2",
                "4096x4096@64=64:64:64:4:3:9", "4096x4096@64=64:64:64:4:3", "4096x4096@64=64:64:8:4:3:1"):
        with pytest.raises(ValueError, match="WARD_SPLIT_GEMM_PLANS"):
            parse_plan_overrides(bad)
    assert set(ROW_BUCKETS) == {64, 128, 256, 512}


def test_bad_operands_are_refused_before_a_launch() -> None:
    from worker.kernels.split_gemm import split_gemm

    w = torch.zeros(64, 32)
    for x, weight, bias, match in [
        (torch.zeros(8, 32), w, None, "9 to 512 rows"),  # the decode GEMV's rows
        (torch.zeros(513, 32), w, None, "9 to 512 rows"),
        (torch.zeros(16, 32), torch.zeros(64, 31), None, "weight must be"),
        (torch.zeros(16, 32), w.double(), None, "share a float dtype"),
        (torch.zeros(16, 32, dtype=torch.int32), w.int(), None, "share a float dtype"),
        (torch.zeros(16, 32), w, torch.zeros(63), "bias must be"),
        (torch.zeros(16, 64)[:, ::2], w, None, "contiguous last dim"),
    ]:
        with pytest.raises(KernelInputError, match=match):
            split_gemm(x, weight, bias)
    with pytest.raises(KernelInputError, match="out must be"):
        split_gemm(torch.zeros(16, 32), w, out=torch.zeros(16, 63))


def test_reserved_workspace_holds_every_row_counts_launch(monkeypatch) -> None:
    # what a decode graph of any batch from 9 to 512 rows finds reserved before its capture
    from worker.kernels import split_gemm
    from worker.kernels.decode_gemv import workspace
    from worker.kernels.split_gemm import plan_for, reserve_workspace, workspace_need

    monkeypatch.setattr(split_gemm, "num_sms", lambda device: 132)  # a card's grid, not the CPU stand-in
    weight = torch.empty(4096, 14336)
    reserve_workspace(weight)
    space = workspace(weight.device)
    for rows in range(MIN_ROWS, MAX_ROWS + 1):
        floats, tickets = workspace_need(4096, plan_for(rows, weight), rows)
        assert floats <= space.partials.numel() and tickets <= space.tickets.numel(), rows
    assert space.partials.numel() > 0  # some of those launches split


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [9, 64, 100, 256, 512])
@pytest.mark.parametrize("name", sorted(LLAMA_8B))
def test_split_gemm_matches_torch_on_gpu_bf16(name: str, rows: int) -> None:
    from kernels_cases import check_split_gemm

    metrics = check_split_gemm(rows, *LLAMA_8B[name], "cuda", torch.bfloat16, bias=name == "qkv")
    assert metrics["rel_err"] <= 1e-2 and metrics["unwritten"] == 0, metrics
    assert metrics["repeat_mismatch"] == 0 and metrics["tickets_left"] == 0, metrics


def test_the_setting_names_projections_and_refuses_unknown_ones(monkeypatch) -> None:
    from worker.model.decode_linear import split_gemm_projections

    for value, expected in [("", ()), ("0", ()), ("1", ("o", "down")), ("all", ("qkv", "o", "gate_up", "down")),
                            ("down, qkv", ("down", "qkv"))]:
        monkeypatch.setenv("WARD_SPLIT_GEMM", value)
        assert split_gemm_projections() == expected, value
    monkeypatch.setenv("WARD_SPLIT_GEMM", "o,lm_head")
    with pytest.raises(ValueError, match="unknown projections"):
        split_gemm_projections()
