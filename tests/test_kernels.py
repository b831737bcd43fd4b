"""Triton kernels against the torch references: in Triton's interpreter on the CPU, compiled on CUDA.

CPU: Triton picks interpreter or compiler when a kernel is defined, so the interpreter cases run in a
fresh process with ``TRITON_INTERPRET=1`` (``kernels_interpreter.py``, float32, small shapes) and each
test here asserts one case's metrics. This process itself never imports the kernels on a CPU-only
machine, so it cannot fix Triton's mode for other test modules.
GPU (``@pytest.mark.gpu``): the same checks, compiled, in bfloat16 at Llama-3.1-8B shapes, plus CUDA-graph
capture and replay and a no-synchronisation check.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from kernels_cases import (  # noqa: E402
    AttentionCase,
    check_attention,
    check_decode_gemv,
    check_fp8_w8a8_gemv_layer,
    check_fp8_w8a8_mlp_normed,
    check_fused_moe,
    check_gelu_tanh_and_mul,
    check_gemma_norms,
    check_greedy_argmax,
    check_head_norms,
    check_moe_align,
    check_moe_routing,
    check_reshape_and_cache,
    check_rms_norm,
    check_rotary,
    check_rotary_cache,
    check_rotary_cache_head_norms,
    check_silu_and_mul,
    check_token_bitmask,
)
from kernels_cpu_cases import all_case_names  # noqa: E402
from interpreter_run import run_interpreter_script  # noqa: E402

from worker.kernels.attention_config import (  # noqa: E402  (plain Python: no Triton import)
    DECODE_TILE,
    MAX_PIECES,
    MAX_SPLITS,
    PIECE_PROGRAMS_PER_SM,
    PIECE_TOKENS,
    decode_tile,
    choose_decode_pieces,
    choose_num_splits,
    decode_piece_policy,
    choose_tile_config,
    next_power_of_2,
    prefill_tile,
)
from worker.kernels.decode_gemv_config import (  # noqa: E402
    LLAMA_8B_FP8_PLANS, LLAMA_8B_FP8_WIDE_PLANS, LLAMA_8B_PLANS, MAX_SPLIT_K, GemvPlan, choose_plan, k_per_split, parse_plan_overrides, pipeline_bytes,
)

INTERPRETER_TOLERANCE = 1e-4  # float32 in the interpreter
BF16_ATTENTION_TOLERANCE = 1e-2
BF16_ELEMENTWISE_TOLERANCE = 4e-3  # half a bfloat16 ulp (2^-8): one rounding of the output is allowed
# Metrics that must be exactly zero whenever a check reports them.
ZERO_METRICS = (
    "unwritten",
    "padding_req_nonzero",
    "padding_rows_wrong",
    "cache_mismatch",
    "mismatch",
    "residual_mismatch",
    "pass_through_changed",
    "v_changed",
    "mismatched",
    "repeat_mismatch",
    "tickets_left",
    "not_w8a8",
    "unfused",
    "plain_rows",
    "tuned_plan_not_taken",
    "k_changed",
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: CUDA is not available")


def assert_metrics(metrics: dict, tolerance: float) -> None:
    """Every ``*rel_err`` within tolerance, every count in ZERO_METRICS zero, nothing unchecked."""
    checked = set()
    for key, value in metrics.items():
        if key.endswith("rel_err"):
            assert value <= tolerance, f"{key} = {value:.3e} > {tolerance:.0e} ({metrics})"
            checked.add(key)
        elif key in ZERO_METRICS:
            assert value == 0, f"{key} = {value} ({metrics})"
            checked.add(key)
    if "written" in metrics:
        assert metrics["written"] == metrics["expected_written"], metrics
        checked |= {"written", "expected_written"}
    if "unraised" in metrics:
        assert metrics["tried"], metrics
        assert metrics["unraised"] == [], f"calls that did not raise KernelInputError: {metrics['unraised']}"
        checked |= {"unraised", "tried"}
    assert checked == set(metrics), f"unchecked metrics: {set(metrics) - checked}"


# ---------------------------------------------------------------- CPU: Triton's interpreter


def _python_path() -> str:
    """PYTHONPATH for helper processes: the repository root first, so ``worker`` is this checkout's."""
    return os.pathsep.join(filter(None, [str(TESTS_DIR.parent), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return run_interpreter_script("kernels_interpreter.py")


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="on a GPU machine the compiled kernels run these cases (gpu tests); older Triton interpreters "
    "(3.6) cannot run loops whose bounds are tensors",
)
@pytest.mark.parametrize("case", all_case_names())
def test_kernel_matches_torch_reference_in_interpreter(case: str, interpreter_results: dict) -> None:
    result = interpreter_results.get(case)
    assert result is not None, f"case {case} did not run"
    assert "error" not in result, result.get("error")
    assert_metrics(result["metrics"], INTERPRETER_TOLERANCE)


def test_every_kernel_variant_compiles_for_hopper() -> None:
    # Compilation (layouts, loop-carried types, dot shapes) is what the interpreter cannot check.
    env = {**os.environ, "PYTHONPATH": _python_path()}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, str(TESTS_DIR / "kernels_compile.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=TESTS_DIR.parent,
    )
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {name: result["error"] for name, result in report.items() if "error" in result}
    assert not failed, "\n".join(f"{name}:\n{error}" for name, error in failed.items())
    # The attention loop's K/V loads must be software-pipelined (cp.async) and feed tensor cores.
    decode, prefill = report["attention_decode_group4_d128"], report["attention_prefill_group4_d128"]
    assert decode["cp_async"] > 0 and decode["mma_sync"] > 0, decode
    assert prefill["cp_async"] > 0 and prefill["wgmma"] > 0, prefill
    # PDL variants wait for the kernel before them and release the one after; the others never do.
    pdl = {name: result for name, result in report.items() if name.endswith("_pdl")}
    assert len(pdl) == 14, sorted(pdl)
    for name, result in report.items():
        expected = 1 if name in pdl else 0
        assert (result["gdc_wait"] >= expected, result["gdc_launch"] >= expected) == (True, True), (name, result)
        if not expected:
            assert result["gdc_wait"] == result["gdc_launch"] == 0, (name, result)
    # the GEMV keeps its pipelined weight stream behind the prefetched first tile
    assert pdl["decode_gemv_qkv_split2_pdl"]["cp_async"] > 0, pdl["decode_gemv_qkv_split2_pdl"]
    # no variant spills registers to local memory; the one-pass SiLU-and-quantize holds a whole
    # 14,336-wide row in registers, so its report must have been read (cuobjdump ships with Triton)
    assert report["silu_and_mul_fp8_one_pass"]["local_bytes"] == 0, report["silu_and_mul_fp8_one_pass"]
    spilling = {name: result["local_bytes"] for name, result in report.items() if result["local_bytes"] > 0}
    assert not spilling, spilling
    # an e4m3-by-e4m3 decode GEMV runs on the warpgroup MMA (no per-warp MMA over widened operands)
    for name in ("decode_gemv_fp8_w8a8_gate_up_silu_pdl", "decode_gemv_fp8_w8a8_down_split3"):
        assert report[name]["wgmma"] > 0 and report[name]["mma_sync"] == 0, (name, report[name])


def test_importing_the_kernel_package_defines_no_kernel() -> None:
    # The lazy package is what lets a process pick Triton's interpreter after importing worker.kernels.
    code = (
        "import sys, worker.kernels; "
        "print(sorted(m for m in sys.modules if m.startswith(('triton', 'worker.kernels.'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=TESTS_DIR.parent,
        env={**os.environ, "PYTHONPATH": _python_path()},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_gemma_kernels_setting_swaps_in_the_torch_expressions_for_a_b() -> None:
    """``WARD_GEMMA_KERNELS=0``: the Triton ops give Gemma's norms and GeGLU their torch expressions;
    unset or 1, the kernels."""
    code = (
        "from worker.kernels import model_ops; from worker.model import ops; "
        "names = ('gemma_rms_norm', 'gemma_add_rms_norm', 'gelu_tanh_and_mul'); "
        "print(sum(getattr(model_ops, n) is getattr(ops, n) for n in names))"
    )
    seen = {}
    for value in (None, "1", "0"):
        env = {**os.environ, "PYTHONPATH": _python_path()}
        env.pop("WARD_GEMMA_KERNELS", None)
        if value is not None:
            env["WARD_GEMMA_KERNELS"] = value
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=TESTS_DIR.parent, env=env)
        assert proc.returncode == 0, proc.stderr
        seen[value] = proc.stdout.strip()
    assert seen == {None: "0", "1": "0", "0": "3"}, seen


# ---------------------------------------------------------------- launch heuristics (plain Python)


@pytest.mark.parametrize(
    ("num_programs", "max_seq_len", "num_sms", "expected"),
    [
        (132, 32768, 132, 1),  # grid already fills the card
        (8, 32768, 132, 32),  # batch-1 decode of an 8-KV-head model, long context
        (8, 1024, 132, 4),  # limited by 256 tokens per split
        (8, 300, 132, 1),  # too short to be worth splitting
        (64, 8192, 132, 4),  # 5 splits would reach ~2 programs per SM; rounded down to a power of two
        (1, 10**6, 132, MAX_SPLITS),
        (0, 4096, 132, 1),
    ],
)
def test_split_count_heuristic(num_programs: int, max_seq_len: int, num_sms: int, expected: int) -> None:
    assert choose_num_splits(num_programs, max_seq_len, num_sms) == expected


def test_split_count_is_a_bounded_power_of_two() -> None:
    for num_programs in (1, 3, 8, 17, 64, 131):
        for max_seq_len in (1, 255, 256, 513, 4000, 70000):
            splits = choose_num_splits(num_programs, max_seq_len, 132)
            assert 1 <= splits <= MAX_SPLITS and splits & (splits - 1) == 0
            assert splits == 1 or max_seq_len // splits >= 256


@pytest.mark.parametrize(
    ("batch", "expected"),
    [(17, 8), (32, 8), (48, 4), (64, 4), (96, 2), (128, 2), (192, 1), (256, 1), (1024, 1)],
)
def test_decode_pieces_bring_an_8_kv_head_grid_to_about_16_programs_per_sm(batch: int, expected: int) -> None:
    assert choose_decode_pieces(batch * 8, 132) == expected


def test_decode_pieces_are_a_bounded_power_of_two() -> None:
    for num_programs in (0, 1, 7, 132, 133, 1000, 10**6):
        pieces = choose_decode_pieces(num_programs, 132)
        assert 1 <= pieces <= MAX_PIECES and pieces & (pieces - 1) == 0


def test_decode_switches_parse_or_say_what_they_expect() -> None:
    assert decode_piece_policy("0") is None
    assert decode_piece_policy("1") == (PIECE_TOKENS, PIECE_PROGRAMS_PER_SM)
    assert decode_piece_policy("512:8") == (512, 8)
    assert decode_piece_policy("384") == (384, PIECE_PROGRAMS_PER_SM)
    for bad in ("", "x", "0:4", "256:0", "256:x", "-1"):
        with pytest.raises(ValueError, match="WARD_DECODE_PIECES"):
            decode_piece_policy(bad)
    assert decode_tile("64:4:3") == (64, 4, 3)
    for bad in ("64:4", "64:0:3", "a:b:c"):
        with pytest.raises(ValueError, match="WARD_DECODE_TILE"):
            decode_tile(bad)
    assert prefill_tile("") is None
    assert prefill_tile("128:64:8:3") == (128, 64, 8, 3)
    for bad in ("128:64:8", "96:64:8:2", "8:64:4:2", "128:48:8:2", "128:64:0:2", "a:b:c:d"):
        with pytest.raises(ValueError, match="WARD_PREFILL_TILE"):
            prefill_tile(bad)


def test_prefill_tile_override_keeps_whole_query_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.kernels.attention_config as attention_config

    monkeypatch.setattr(attention_config, "PREFILL_TILE", (64, 128, 4, 3))
    config = choose_tile_config(2048, 4, 128)
    assert (config.block_m, config.block_q, config.tile_n, config.num_warps, config.num_stages) == (64, 16, 128, 4, 3)
    assert choose_tile_config(2048, 128, 128).block_m == 128  # a group wider than the rows asked
    assert choose_tile_config(1, 4, 128).tile_n == DECODE_TILE[0]  # decode steps keep their tiles


@pytest.mark.parametrize("group", [1, 2, 3, 4, 5, 8, 16, 32, 64])
@pytest.mark.parametrize("max_query_len", [1, 2, 3, 16, 17, 64, 2048])
def test_tile_config_rows_hold_whole_query_groups(group: int, max_query_len: int) -> None:
    config = choose_tile_config(max_query_len, group, 128)
    assert config.block_m >= 16 and config.block_q >= 1
    assert config.block_m == config.block_q * next_power_of_2(group)


def test_tile_config_by_step_shape() -> None:
    decode = choose_tile_config(1, 4, 128)
    assert (decode.block_m, decode.block_q) == (16, 4)
    assert choose_tile_config(1, 8, 128).block_q == 2
    assert choose_tile_config(1, 32, 128).block_m == 32
    prefill = choose_tile_config(2048, 4, 128)
    assert (prefill.block_m, prefill.tile_n, prefill.num_warps, prefill.num_stages) == (64, 64, 4, 3)
    assert choose_tile_config(2048, 4, 256).tile_n == 32  # wide heads keep the stages in shared memory
    assert choose_tile_config(2048, 4, 128, element_size=4).tile_n == 32  # so do float32 caches


@pytest.mark.parametrize(("n", "k"), [*(key[:2] for key in LLAMA_8B_PLANS), (1024, 1024), (3072, 3072), (2048, 8192),
                                       (100, 60), (5120, 13824), (8192, 28672)])
def test_decode_gemv_plan_covers_k_with_nonempty_splits(n: int, k: int) -> None:
    plan = choose_plan(n, k, 132)
    per = k_per_split(k, plan)
    assert 1 <= plan.split_k <= MAX_SPLIT_K and per % plan.block_k == 0
    assert per * plan.split_k >= k > per * (plan.split_k - 1)  # every split has work, together all of K


def test_decode_gemv_splits_only_grids_that_leave_most_sms_idle() -> None:
    assert choose_plan(4096, 4096, 132).split_k == 1  # o_proj: 128 column tiles for 132 SMs
    assert choose_plan(28672, 4096, 132).split_k == 1  # gate_up: 896 tiles fill the card
    assert choose_plan(3072, 3072, 132).split_k == 1  # by rule: 96 tiles, two splits would not fit
    assert choose_plan(1024, 4096, 132).split_k == 4  # 32 tiles: split while 2 x the grid fits 132 SMs
    assert choose_plan(32768, 4096, 132).split_k == 1


H100_SHARED_LIMIT = 232448  # bytes a program may use (the limit an H100 reported refusing a launch)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("element_size", [1, 2, 4])
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (14336, 4096), (6144, 4096), (4096, 14336), (1024, 4096)])
def test_decode_gemv_plans_fit_shared_memory(n: int, k: int, silu: bool, element_size: int) -> None:
    plan = choose_plan(n, k, 132, silu, element_size, H100_SHARED_LIMIT)
    assert pipeline_bytes(plan, silu, element_size) <= H100_SHARED_LIMIT, plan
    assert plan.num_stages >= 2 and plan.block_k >= 16


def test_decode_gemv_e4m3_weights_take_their_own_table_else_twice_the_k_step() -> None:
    # the FP8 table (timed on an H100, 2026-12-07) for the Llama-3.1-8B shapes, kept as measured
    for (n, k, silu), plan in LLAMA_8B_FP8_PLANS.items():
        assert choose_plan(n, k, 132, silu, 1, H100_SHARED_LIMIT) == plan, (n, k)
        assert pipeline_bytes(plan, silu, 1) <= H100_SHARED_LIMIT
    # launches of WIDE_ROWS rows or more take the wide table's where it has the shape
    for (n, k, silu), plan in LLAMA_8B_FP8_WIDE_PLANS.items():
        assert choose_plan(n, k, 132, silu, 1, H100_SHARED_LIMIT, rows=8) == plan
        assert choose_plan(n, k, 132, silu, 1, H100_SHARED_LIMIT, rows=1) == LLAMA_8B_FP8_PLANS[(n, k, silu)]
        assert choose_plan(n, k, 132, silu, 2, H100_SHARED_LIMIT, rows=8) == LLAMA_8B_PLANS[(n, k, silu)]
    # other shapes: each step streams the 16-bit plan's bytes
    for n, k in ((3072, 3072), (28672, 4096), (5120, 13824)):
        fp8, bf16 = choose_plan(n, k, 132, element_size=1), choose_plan(n, k, 132)
        assert (fp8.block_n, fp8.block_k, fp8.num_warps) == (bf16.block_n, 2 * bf16.block_k, bf16.num_warps), (n, k)


def test_decode_gemv_wide_launches_take_their_own_override(monkeypatch) -> None:
    from worker.kernels import decode_gemv, decode_gemv_config as config

    wide = GemvPlan(16, 128, 8, 3, 2)
    monkeypatch.setattr(config, "WIDE_PLAN_OVERRIDES", config.parse_plan_overrides("4096x14336=16:128:8:3:2"))
    narrow = choose_plan(4096, 14336, 132)
    assert choose_plan(4096, 14336, 132, rows=config.WIDE_ROWS - 1) == narrow
    assert choose_plan(4096, 14336, 132, rows=config.WIDE_ROWS) == wide
    assert choose_plan(4096, 14336, 132, rows=8) == wide
    assert choose_plan(4096, 4096, 132, rows=8) == choose_plan(4096, 4096, 132)  # other shapes keep theirs
    # a graph captured at either row count finds the workspace its plan needs already reserved
    weight = torch.empty(4096, 14336)
    need = decode_gemv.workspace_need(weight)
    assert need == decode_gemv.workspace_need(weight, plan=wide) and need[0] > 0
    assert need[0] >= decode_gemv.workspace_need(weight, plan=decode_gemv.plan_for(weight))[0]


def test_decode_gemv_silu_launch_never_takes_another_shapes_plan() -> None:
    # A SiLU gate_up of intermediate 4096 on hidden 4096 has the o_proj's (N, K): the table's o plan
    # (32 x 512 tiles, 4 stages) would need 245,760 bytes with two weight tiles a step; an H100 refused it.
    plan = choose_plan(4096, 4096, 132, silu=True, element_size=2, shared_limit=H100_SHARED_LIMIT)
    assert plan != LLAMA_8B_PLANS[(4096, 4096, False)]
    assert pipeline_bytes(LLAMA_8B_PLANS[(4096, 4096, False)], True, 2) == 245760
    # the table's plans are kept as measured where they fit
    assert choose_plan(4096, 4096, 132, False, 2, H100_SHARED_LIMIT) == LLAMA_8B_PLANS[(4096, 4096, False)]
    assert choose_plan(14336, 4096, 132, True, 2, H100_SHARED_LIMIT) == LLAMA_8B_PLANS[(14336, 4096, True)]


# ---------------------------------------------------------------- GPU: compiled kernels, bfloat16


def _lengths(seed: int, count: int, low: int, high: int) -> tuple[int, ...]:
    rng = random.Random(seed)
    return tuple(rng.randint(low, high) for _ in range(count))


LLAMA_8B = dict(num_heads=32, num_kv_heads=8, head_dim=128)
GPU_ATTENTION_CASES: dict[str, AttentionCase] = {
    "decode_batch64_8b": AttentionCase((1,) * 64, _lengths(1, 64, 1, 4000), **LLAMA_8B),
    "decode_batch2_long_context_heuristic_split": AttentionCase((1, 1), (16000, 5003), **LLAMA_8B),
    "decode_split_forced": AttentionCase((1,) * 4, _lengths(2, 4, 500, 3000), num_splits=8, **LLAMA_8B),
    "decode_pieces_longest_first_padding": AttentionCase(
        (1,) * 40, _lengths(5, 40, 1, 3000), split_tokens=256, num_splits=8, longest_first=True, padding_reqs=3,
        padding_rows=2, **LLAMA_8B
    ),
    "prefill_8b": AttentionCase((512, 300, 1000), (0, 0, 0), **LLAMA_8B),
    "chunked_prefill_8b": AttentionCase((256, 1, 1, 512), (1024, 700, 3000, 2048), **LLAMA_8B),
    "steady_state_decodes_plus_chunk": AttentionCase((1,) * 60 + (512,), _lengths(3, 60, 1, 3000) + (777,), **LLAMA_8B),
    "group1_head128": AttentionCase((1, 1, 200, 1), (900, 17, 300, 2500), num_heads=16, num_kv_heads=16, head_dim=128),
    "group4_head64_block32": AttentionCase(
        (1, 300, 1, 7), (1500, 0, 33, 400), num_heads=16, num_kv_heads=4, head_dim=64, block_size=32
    ),
    "group8_head128_block32": AttentionCase(
        (1, 129, 1), (2000, 511, 64), num_heads=32, num_kv_heads=4, head_dim=128, block_size=32
    ),
    "group8_head64_block16": AttentionCase(
        (1, 64, 1, 1), (100, 900, 3000, 1), num_heads=32, num_kv_heads=4, head_dim=64
    ),
    "block64": AttentionCase((1, 100, 1), (1000, 200, 77), block_size=64, **LLAMA_8B),
    "sliding_window_512": AttentionCase((1, 700, 1, 64), (3000, 100, 400, 2000), sliding_window=512, **LLAMA_8B),
    "sliding_window_split_forced": AttentionCase((1, 1), (5000, 300), sliding_window=1000, num_splits=8, **LLAMA_8B),
    "graph_padding_decode": AttentionCase(
        (1,) * 30, _lengths(4, 30, 1, 2000), padding_reqs=2, padding_rows=4, **LLAMA_8B
    ),
    "graph_padding_split": AttentionCase((1, 1), (4000, 10), padding_reqs=2, padding_rows=6, num_splits=16, **LLAMA_8B),
    "backend_mixed": AttentionCase(
        (1, 1, 400, 1), (50, 3000, 100, 7), padding_rows=5, through_backend=True, **LLAMA_8B
    ),
}


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("case", list(GPU_ATTENTION_CASES))
def test_attention_matches_reference_on_gpu_bf16(case: str) -> None:
    assert_metrics(check_attention(GPU_ATTENTION_CASES[case], "cuda", torch.bfloat16), BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
def test_attention_float32_is_exact_on_gpu() -> None:
    # float32 runs its dots in IEEE precision (no TF32), so fp32 models keep fp32 attention.
    case = AttentionCase((1, 40, 1), (300, 20, 5), num_heads=8, num_kv_heads=2, head_dim=128)
    assert_metrics(check_attention(case, "cuda", torch.float32), 1e-5)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("num_tokens", "num_padding", "block_size"), [(4096, 0, 16), (300, 37, 32)])
def test_cache_write_on_gpu_bf16(num_tokens: int, num_padding: int, block_size: int) -> None:
    metrics = check_reshape_and_cache(
        num_tokens, 8, 128, block_size, num_padding, "cuda", torch.bfloat16, strided_input=True
    )
    assert_metrics(metrics, 0.0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("shape", [(512, 4096), (3, 8192), (2, 5, 4096)])
def test_rms_norms_on_gpu_bf16(shape: tuple[int, ...]) -> None:
    assert_metrics(check_rms_norm(shape, "cuda", torch.bfloat16), BF16_ELEMENTWISE_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("head_dim", "rotary_dim", "is_neox"), [(128, 128, True), (128, 64, True), (64, 64, False)])
def test_rotary_on_gpu_bf16(head_dim: int, rotary_dim: int, is_neox: bool) -> None:
    metrics = check_rotary(512, 32, 8, head_dim, rotary_dim, is_neox, "cuda", torch.bfloat16)
    assert_metrics(metrics, BF16_ELEMENTWISE_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("num_tokens", "num_padding", "rotary_dim", "block_size"),
                         [(1, 0, 128, 16), (8, 3, 128, 16), (512, 7, 128, 32), (33, 0, 64, 16)])
def test_rotary_with_cache_write_matches_the_two_kernels_on_gpu_bf16(
    num_tokens: int, num_padding: int, rotary_dim: int, block_size: int
) -> None:
    metrics = check_rotary_cache(num_tokens, 32, 8, 128, rotary_dim, block_size, num_padding, "cuda", torch.bfloat16)
    assert_metrics(metrics, 0.0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("tokens", "experts", "top_k", "renormalize"), [(1, 8, 2, True), (512, 8, 2, True),
                                                                          (1, 128, 8, False), (300, 128, 8, True)])
def test_one_launch_moe_router_matches_the_torch_router_on_gpu(tokens: int, experts: int, top_k: int,
                                                                renormalize: bool) -> None:
    assert_metrics(check_moe_routing(tokens, experts, top_k, renormalize, "cuda", torch.bfloat16), 1e-5)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("tokens", "experts", "top_k"), [(1, 8, 2), (8, 8, 2), (1, 128, 8), (512, 128, 8), (2048, 8, 2)])
def test_one_launch_moe_align_matches_the_torch_grouping_on_gpu(tokens: int, experts: int, top_k: int) -> None:
    """Mixtral's and Qwen3-MoE's routings at decode and prefill sizes, all through the one launch."""
    assert_metrics(check_moe_align(tokens, experts, top_k, 16 if tokens * top_k <= 1024 else 64, "cuda"), 0.0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("num_tokens", "fp8_scales"), [(1, "head"), (512, "head"), (33, "tensor")])
def test_rotary_with_fp8_cache_write_matches_the_two_kernels_on_gpu_bf16(num_tokens: int, fp8_scales: str) -> None:
    metrics = check_rotary_cache(num_tokens, 32, 8, 128, 128, 16, 3 if num_tokens > 3 else 0, "cuda", torch.bfloat16,
                                 fp8_scales=fp8_scales)
    assert_metrics(metrics, 0.0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("num_tokens", "num_kv_heads", "adds_one"), [(1, 8, False), (512, 8, False), (1, 16, True),
                                                                     (300, 16, True)])  # Qwen3-8B, Gemma 3 27B
def test_rotary_cache_write_with_head_norms_matches_the_three_kernels_on_gpu_bf16(
    num_tokens: int, num_kv_heads: int, adds_one: bool
) -> None:
    metrics = check_rotary_cache_head_norms(num_tokens, 32, num_kv_heads, 128, 16, 3 if num_tokens > 3 else 0, "cuda",
                                            torch.bfloat16, adds_one)
    assert_metrics(metrics, BF16_ELEMENTWISE_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("num_tokens", "intermediate"), [(512, 14336), (1, 14336), (7, 1000)])
def test_silu_and_mul_on_gpu_bf16(num_tokens: int, intermediate: int) -> None:
    assert_metrics(check_silu_and_mul(num_tokens, intermediate, "cuda", torch.bfloat16), BF16_ELEMENTWISE_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("num_tokens", "intermediate"), [(512, 21504), (1, 21504), (7, 1000)])  # Gemma 3 27B
def test_gelu_tanh_and_mul_on_gpu_bf16(num_tokens: int, intermediate: int) -> None:
    metrics = check_gelu_tanh_and_mul(num_tokens, intermediate, "cuda", torch.bfloat16)
    assert_metrics(metrics, BF16_ELEMENTWISE_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("rows", [1, 8])
def test_decode_gemv_gelu_tanh_epilogue_on_gpu_bf16(rows: int) -> None:
    """Gemma 3 27B's gate_up (2 x 21,504 rows over 5,376) with the GeGLU epilogue, in the plan it takes."""
    assert_metrics(check_decode_gemv(rows, 21504, 5376, "cuda", torch.bfloat16, silu=True, gelu_tanh=True),
                   BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("tokens", [2, 8, 512])  # one token's heads are plain rows
def test_head_norms_on_per_head_views_on_gpu_bf16(tokens: int) -> None:
    metrics = check_head_norms(tokens, 32, 16, 128, "cuda", torch.bfloat16)  # Gemma 3 27B's heads
    assert_metrics(metrics, BF16_ELEMENTWISE_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("shape", [(512, 5376), (1, 5376), (8, 32, 128)])  # Gemma 3 27B's hidden and heads
def test_gemma_norms_on_gpu_bf16(shape: tuple[int, ...]) -> None:
    assert_metrics(check_gemma_norms(shape, "cuda", torch.bfloat16), BF16_ELEMENTWISE_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "vocab"), [(1, 128256), (8, 128256), (256, 151936), (3, 100)])
def test_greedy_argmax_matches_torch_on_gpu(rows: int, vocab: int, dtype: torch.dtype) -> None:
    assert_metrics(check_greedy_argmax(rows, vocab, "cuda", dtype), 0.0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("num_rows", "vocab", "grammar_rows"), [(64, 128256, tuple(range(64))),
                                                                 (256, 151936, (3, 100, 255)), (1, 49152, (0,))])
def test_token_bitmask_matches_torch_path_on_gpu(num_rows: int, vocab: int, grammar_rows: tuple[int, ...]) -> None:
    assert_metrics(check_token_bitmask(num_rows, vocab, grammar_rows, "cuda"), 0.0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("num_tokens", "num_experts", "top_k", "hidden", "intermediate"), [
    (1, 8, 2, 1024, 3584),  # Mixtral-like routing, a decode
    (300, 8, 2, 1024, 3584),  # a prefill: many blocks per expert
    (5, 128, 8, 2048, 768),  # Qwen3-MoE-like: 128 experts, top-8, most idle
    (700, 128, 8, 2048, 768),  # the large-block path (T * top_k > 1024)
])
def test_fused_moe_matches_reference_on_gpu_bf16(num_tokens, num_experts, top_k, hidden, intermediate) -> None:
    assert_metrics(check_fused_moe(num_tokens, num_experts, top_k, hidden, intermediate, "cuda", torch.bfloat16),
                   BF16_ATTENTION_TOLERANCE)


LLAMA_8B_GEMV = {  # name: (output width, K, SiLU epilogue)
    "qkv": (6144, 4096, False), "o": (4096, 4096, False), "gate_up": (28672, 4096, False),
    "gate_up_silu": (14336, 4096, True), "down": (4096, 14336, False),
}


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("rows", [1, 2, 5, 8])
@pytest.mark.parametrize("name", list(LLAMA_8B_GEMV))
def test_decode_gemv_matches_torch_on_gpu_bf16(name: str, rows: int) -> None:
    n, k, silu = LLAMA_8B_GEMV[name]
    assert_metrics(check_decode_gemv(rows, n, k, "cuda", torch.bfloat16, silu=silu), BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("name", list(LLAMA_8B_GEMV))
def test_decode_gemv_over_fp8_weights_matches_dequantized_on_gpu(name: str, rows: int) -> None:
    """e4m3 weights with per-row scales (FP8 checkpoints, FP8 at load) widened in registers."""
    n, k, silu = LLAMA_8B_GEMV[name]
    assert_metrics(check_decode_gemv(rows, n, k, "cuda", torch.bfloat16, silu=silu, bias=name == "qkv", fp8=True),
                   BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("rows", [1, 8])
def test_fp8_layer_with_the_w8a8_gemv_matches_w8a8_on_gpu(rows: int) -> None:
    """``WARD_FP8_GEMV_W8A8`` (a layer it names): the FP8 layer's decode GEMV over its input quantized per row (in the
    layer, or handed over as ``Fp8Activation``; the gate_up shape's fused SiLU too) at qkv's width."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need Ada or Hopper")
    assert_metrics(check_fp8_w8a8_gemv_layer(rows, 4096, 6144, False, "cuda", torch.bfloat16),
                   BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("rows", [1, 8])
def test_fp8_mlp_with_normed_w8a8_matches_w8a8_on_gpu(rows: int) -> None:
    """``WARD_FP8_GEMV_W8A8=normed``'s MLP at Llama-3.1-8B's widths: quantized rows through gate_up's
    e4m3-by-e4m3 GEMV with the SiLU epilogue, down_proj widening."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need Ada or Hopper")
    assert_metrics(check_fp8_w8a8_mlp_normed(rows, 4096, 14336, "cuda", torch.bfloat16), BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("fp8_math", [1, 2])
@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("name", list(LLAMA_8B_GEMV))
def test_decode_gemv_fp8_other_maths_match_dequantized_on_gpu(name: str, rows: int, fp8_math: int) -> None:
    """The e4m3 weights met in float16 (FP8_MATH 1) or by e4m3 x on the warpgroup MMA (FP8_MATH 2)."""
    n, k, silu = LLAMA_8B_GEMV[name]
    bias = name == "qkv" and fp8_math == 1  # an e4m3 x takes no bias
    assert_metrics(check_decode_gemv(rows, n, k, "cuda", torch.bfloat16, silu=silu, bias=bias, fp8=True,
                                     fp8_math=fp8_math), BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("plan", [(32, 256, 4, 4, 1), (32, 256, 4, 3, 4), (64, 128, 4, 4, 8), (16, 512, 4, 2, 3)])
def test_decode_gemv_every_plan_shape_on_gpu_bf16(plan: tuple[int, int, int, int, int]) -> None:
    assert_metrics(check_decode_gemv(3, 4096, 4096, "cuda", torch.bfloat16, bias=True, plan=plan),
                   BF16_ATTENTION_TOLERANCE)
    assert_metrics(check_decode_gemv(8, 1000, 1500, "cuda", torch.bfloat16, silu=True, plan=plan),
                   BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
def test_decode_gemv_captures_in_cuda_graph_and_replays_new_inputs() -> None:
    from kernels_graph import check_decode_gemv_graph

    assert_metrics(check_decode_gemv_graph(), BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("num_splits", [1, None])
def test_attention_step_captures_in_cuda_graph_and_replays_new_lengths(num_splits: int | None) -> None:
    from kernels_graph import check_graph_replay

    metrics = check_graph_replay(num_splits)
    assert_metrics(metrics, BF16_ATTENTION_TOLERANCE)


@pytest.mark.gpu
@requires_cuda
def test_kernels_never_synchronise_with_the_host() -> None:
    from kernels_graph import build_kernel_inputs, run_every_kernel

    inputs = build_kernel_inputs()
    run_every_kernel(inputs)  # compile first: compilation and input set-up may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_every_kernel(inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_gemv_plan_overrides_parse_and_reject_malformed_entries() -> None:
    assert parse_plan_overrides(" 4096x4096=32:256:4:4:2, 6144X4096=64:128:8:3:1 ") == {
        (4096, 4096): GemvPlan(32, 256, 4, 4, 2), (6144, 4096): GemvPlan(64, 128, 8, 3, 1)}
    assert parse_plan_overrides("4096x4096=32:256:4:4:2;6144x4096=64:128:8:3:1") == {
        (4096, 4096): GemvPlan(32, 256, 4, 4, 2), (6144, 4096): GemvPlan(64, 128, 8, 3, 1)}
    assert parse_plan_overrides("") == {}
    for bad in ("4096x4096=32:256:4:4", "4096=32:256:4:4:2", "4096x4096=24:256:4:4:2", "4096x4096=32:256:4:4:0",
                "4096x4096=32:256:3:4:1", "4096x4096=32:256:4:4:16", "0x4096=32:256:4:4:1"):
        with pytest.raises(ValueError, match="WARD_GEMV_PLANS"):
            parse_plan_overrides(bad)
    with pytest.raises(ValueError, match="num_warps must be powers of two"):
        parse_plan_overrides("4096x4096=32:256:3:4:1")
