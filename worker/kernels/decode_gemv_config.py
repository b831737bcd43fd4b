"""Launch plans of the decode GEMV (``decode_gemv.py``), made on the host from Python ints only.

A plan never changes what is computed beyond the order of the float32 additions (a split adds K
ranges in a fixed order), so every plan gives the same result to rounding. Nothing here imports
Triton or reads a device tensor: the choice is free under CUDA-graph capture and testable anywhere.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

MAX_ROWS = 8  # decode and latency batches; more rows go to cuBLAS
BLOCK_M = 16  # a tensor-core dot needs at least 16 rows: x is padded to them in registers
MAX_SPLIT_K = 8
MIN_K_PER_SPLIT = 1024  # shorter K ranges spend more on partial sums than they gain in parallelism
# Launches of this many rows (the latency batch; decode graphs pad 5-7 sequences to 8) may take plans
# of their own: measured at 8 rows; the one-row plans stay below, where none was timed
WIDE_ROWS = 8


@dataclass(frozen=True)
class GemvPlan:
    """One compiled shape of the kernel: ``block_n`` output columns (with the SiLU epilogue: gate and
    up columns each) and ``block_k`` inputs per step, ``split_k`` programs along K."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int


# A card's tuned plans (``worker.kernels.gemv_tuned``) keyed by (n, k, SiLU, weight element size, wide,
# e4m3 x): the last true for the e4m3-by-e4m3 launches (``choose_w8a8_plan``)
TunedTable = Mapping[tuple[int, int, bool, int, bool, bool], GemvPlan]


# Llama-3.1-8B projections (N, K) at batch 1..8, from bench/gemv_sweep.py on an H100 (2026-12-06:
# weights beyond L2, one axis at a time from the earlier table). The unsplit plan won on every
# shape: the partial sums and the last program's add cost more than the shorter wave saves
# (o_proj 14.8 -> 13.4 us, down 43.1 -> 40.8, qkv 21.4 -> 19.4 at one row).
# Keyed by (N, K, SiLU epilogue): a SiLU launch streams two tiles a step, so another shape's plan
# would not fit it.
LLAMA_8B_PLANS: dict[tuple[int, int, bool], GemvPlan] = {
    (6144, 4096, False): GemvPlan(32, 256, 2, 4, 1),  # qkv
    (4096, 4096, False): GemvPlan(32, 512, 4, 4, 1),  # o
    (28672, 4096, False): GemvPlan(32, 512, 4, 4, 1),  # gate_up unfused
    (14336, 4096, True): GemvPlan(32, 256, 4, 3, 1),  # gate_up with the SiLU epilogue (N = intermediate)
    (4096, 14336, False): GemvPlan(32, 512, 4, 4, 1),  # down
}

# The same projections over e4m3 weights (FP8 checkpoints, or bf16 ones quantized at load), from
# bench/gemv_sweep.py --fp8 on an H100 (2026-12-07). Shorter K steps in three stages beat the
# 16-bit plans' doubled step, and o_proj and down take three K splits: one-byte weights halve each
# program's stream, so a wider grid now pays for its partial sums (batch-1 decode 221 -> 250 tokens/s,
# the latency test 627 -> 582 ms, alternated twice on one card). Since WARD_FP8_GEMV_W8A8=normed became
# the default, qkv and gate_up decode e4m3 by e4m3 (LLAMA_8B_W8A8_PLANS below): their rows here serve
# WARD_FP8_GEMV_W8A8=0 and layers with a static input scale.
LLAMA_8B_FP8_PLANS: dict[tuple[int, int, bool], GemvPlan] = {
    (6144, 4096, False): GemvPlan(16, 256, 2, 3, 1),  # qkv
    (4096, 4096, False): GemvPlan(32, 128, 4, 3, 3),  # o
    (14336, 4096, True): GemvPlan(32, 256, 4, 3, 1),  # gate_up with the SiLU epilogue
    (4096, 14336, False): GemvPlan(32, 512, 4, 3, 3),  # down
}
# ... and at WIDE_ROWS rows (the latency test's 8): the e4m3 gate_up with SiLU ran 14%
# slower at 8 rows than at one in its one-row plan; two K splits took it from 55.8 to 53.8 us at 8
# rows (bench/gemv_sweep.py --fp8 --rows 8) and the latency test from 604.6 to 581.0 ms (means of
# three alternated rounds on one H100, 2026-12-07), batch 1 unchanged.
LLAMA_8B_FP8_WIDE_PLANS: dict[tuple[int, int, bool], GemvPlan] = {
    (14336, 4096, True): GemvPlan(32, 256, 4, 3, 2),
}


# e4m3 x by e4m3 weights (the kernel's FP8_MATH 2, x padded to 64 rows for the warpgroup MMA): the
# fastest of bench/gemv_fp8_math.py's grid on an H100 (2026-12-07), the same at one and at 8 rows. The
# 16-row plans above do not fit this kernel's shared memory (the gate_up plan asked 491,520 bytes).
LLAMA_8B_W8A8_PLANS: dict[tuple[int, int, bool], GemvPlan] = {
    (6144, 4096, False): GemvPlan(64, 256, 4, 4, 1),  # qkv
    (4096, 4096, False): GemvPlan(32, 256, 4, 4, 1),  # o
    (14336, 4096, True): GemvPlan(64, 128, 4, 3, 1),  # gate_up with the SiLU epilogue
    (4096, 14336, False): GemvPlan(64, 256, 4, 4, 2),  # down
    # gate_up without the epilogue (the W8A8 MLP hands its output to silu_and_mul_fp8 for down_proj):
    # the SiLU plan's bytes a step (one 128-row tile for its two 64-row ones), not timed on its own
    (28672, 4096, False): GemvPlan(128, 128, 4, 3, 1),
}
W8A8_FALLBACK_PLAN = GemvPlan(32, 128, 4, 3, 1)  # other shapes: the smallest pipeline of that grid


def choose_w8a8_plan(n: int, k: int, silu: bool = False, rows: int = 1, tuned: TunedTable | None = None) -> GemvPlan:
    """The plan of an e4m3-by-e4m3 launch of ``rows`` rows on an [n, k] weight (n as ``choose_plan``
    takes it): the card's tuned plan (``tuned``), else the table's, else the fallback."""
    plan = tuned.get((n, k, silu, 1, rows >= WIDE_ROWS, True)) if tuned else None
    return _fit_split(plan or LLAMA_8B_W8A8_PLANS.get((n, k, silu), W8A8_FALLBACK_PLAN), k)


def parse_plan_overrides(text: str) -> dict[tuple[int, int], GemvPlan]:
    """``WARD_GEMV_PLANS``: ``NxK=block_n:block_k:warps:stages:split_k`` entries separated by commas or
    semicolons (the latter fit in a comma-separated list of settings) that replace the table's plan
    for that shape (tuning a card by A/B). ValueError for a malformed one."""
    plans: dict[tuple[int, int], GemvPlan] = {}
    for entry in filter(None, (e.strip() for e in re.split("[,;]", text))):
        try:
            shape, _, fields = entry.partition("=")
            n, k = (int(v) for v in shape.lower().split("x"))
            block_n, block_k, warps, stages, split = (int(v) for v in fields.split(":"))
        except ValueError:
            raise ValueError(f"WARD_GEMV_PLANS entry {entry!r} is not NxK=block_n:block_k:warps:stages:split_k")
        plan = GemvPlan(block_n, block_k, warps, stages, split)
        problem = "N and K must be at least 1" if min(n, k) < 1 else plan_problem(plan)
        if problem:
            raise ValueError(f"WARD_GEMV_PLANS entry {entry!r}: {problem}")
        plans[(n, k)] = plan
    return plans


def plan_problem(plan: GemvPlan) -> str | None:
    """Why ``plan`` cannot be launched whatever the shape (None when it can): every size at least 1,
    tile sides and warps powers of two, at most ``MAX_SPLIT_K`` splits."""
    values = dataclasses.astuple(plan)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or min(values) < 1:
        return "every size must be an integer of at least 1"
    if any(v & (v - 1) for v in (plan.block_n, plan.block_k, plan.num_warps)):
        return "block_n, block_k and num_warps must be powers of two"
    if plan.split_k > MAX_SPLIT_K:
        return f"split_k must be at most {MAX_SPLIT_K}"
    return None


PLAN_OVERRIDES = parse_plan_overrides(os.environ.get("WARD_GEMV_PLANS", ""))
# ``WARD_GEMV_WIDE_PLANS``: the same for launches of WIDE_ROWS rows or more only (tuned by
# bench/gemv_sweep.py --rows 8)
WIDE_PLAN_OVERRIDES = parse_plan_overrides(os.environ.get("WARD_GEMV_WIDE_PLANS", ""))


def choose_plan(n: int, k: int, num_sms: int, silu: bool = False, element_size: int = 2,
                shared_limit: int | None = None, rows: int = 1, tuned: TunedTable | None = None) -> GemvPlan:
    """The plan for an [n, k] weight (n = output columns one program family covers; with the SiLU
    epilogue the intermediate size): ``WARD_GEMV_PLANS``'s, the table's (the e4m3 table for one-byte
    weights), else by rule; then with fewer stages or a shorter K step where its pipelined tiles of
    ``element_size``-byte values would not fit ``shared_limit`` bytes of shared memory (None: no
    limit, as under the interpreter).

    One-byte (e4m3) weights of a shape outside their table take twice the 16-bit table's or rule's
    K step, so that a step streams as many bytes as the 16-bit plan: on an H100 (2026-12-07) that
    made FP8 batch-1 decode 4.7% faster (211.6 -> 221.5 tokens/s) than the 16-bit plans.

    A launch of ``rows`` >= WIDE_ROWS takes ``WARD_GEMV_WIDE_PLANS``'s plan for the shape where it
    names one, and an e4m3 launch the wide table's before the e4m3 table's.

    ``tuned``: the card's own plans (``ward tune gemv``), after the environment's and before the
    tables, which were measured on an H100."""
    wide = rows >= WIDE_ROWS
    plan = (WIDE_PLAN_OVERRIDES.get((n, k)) if wide else None) or PLAN_OVERRIDES.get((n, k))
    if plan is None and tuned:
        plan = tuned.get((n, k, silu, element_size, wide, False))
    if plan is None and element_size == 1:
        plan = (LLAMA_8B_FP8_WIDE_PLANS.get((n, k, silu)) if wide else None) or LLAMA_8B_FP8_PLANS.get((n, k, silu))
    if plan is None:
        plan = LLAMA_8B_PLANS.get((n, k, silu)) or _rule_plan(n, k, num_sms)
        if element_size == 1:
            plan = replace(plan, block_k=plan.block_k * 2)
    if shared_limit is not None:
        plan = fit_shared_memory(plan, silu, element_size, shared_limit)
    return _fit_split(plan, k)


def pipeline_bytes(plan: GemvPlan, silu: bool, element_size: int) -> int:
    """Shared memory the kernel's software pipeline holds: ``num_stages - 1`` buffered K steps of the
    weight tile (two with SiLU) and the padded x tile (Triton's allocation, checked against a launch
    refused on an H100: 245,760 bytes for a bfloat16 SiLU plan of 32 x 512 tiles in 4 stages). Beside
    one-byte (e4m3) weights x is 16-bit."""
    x_size = 2 if element_size == 1 else element_size
    per_step = (plan.block_n * (2 if silu else 1) * element_size + BLOCK_M * x_size) * plan.block_k
    return max(1, plan.num_stages - 1) * per_step


def fit_shared_memory(plan: GemvPlan, silu: bool, element_size: int, limit: int) -> GemvPlan:
    """``plan`` with stages, then the K step, reduced until its pipeline fits ``limit`` bytes."""
    while pipeline_bytes(plan, silu, element_size) > limit:
        if plan.num_stages > 2:
            plan = replace(plan, num_stages=plan.num_stages - 1)
        elif plan.block_k > 16:
            plan = replace(plan, block_k=plan.block_k // 2)
        else:
            break
    return plan


def _rule_plan(n: int, k: int, num_sms: int) -> GemvPlan:
    """A shape outside the table. K is split only while the doubled grid still fits one program per
    SM: on an H100 a 128-tile o_proj was 10% faster unsplit than in two splits (bench/gemv_sweep.py),
    so splits serve only grids that would leave most SMs idle."""
    block_n = 32
    block_k = 256 if k >= 256 else max(16, _pow2_at_least(k))
    tiles = -(-n // block_n)
    split = 1
    while (split < MAX_SPLIT_K and 2 * tiles * split <= num_sms
           and k // (2 * split) >= MIN_K_PER_SPLIT):
        split *= 2
    return GemvPlan(block_n, block_k, 4, 4 if block_k <= 256 else 3, split)


def k_per_split(k: int, plan: GemvPlan) -> int:
    """Inputs each program along K covers: whole ``block_k`` steps, so only the last may be ragged."""
    steps = -(-k // plan.block_k)
    return -(-steps // plan.split_k) * plan.block_k


def _fit_split(plan: GemvPlan, k: int) -> GemvPlan:
    """The plan with at most as many K programs as whole K ranges exist (none of them empty)."""
    per = k_per_split(k, plan)
    split = -(-k // per)
    return plan if split == plan.split_k else GemvPlan(plan.block_n, plan.block_k, plan.num_warps,
                                                       plan.num_stages, split)


def _pow2_at_least(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
