"""Launch plans of the split-K GEMM (``split_gemm.py``), made on the host from Python ints only.

The split GEMM is for the decode batches between the decode GEMV's rows and the largest decode
graph (9 to 512 rows), where a projection with few output columns leaves most of the card idle: at
256 rows a 128 x 128 tile gives Llama-8B's o_proj and down_proj (N = 4,096) 64 tiles for 132 SMs,
and cuBLAS ran them at 58% and 68% of their floor on an H100 (docs/performance.md, "What 1.10 on the
bf16 throughput rows would take"). Splitting K gives each tile several programs; the partial sums are
added in split order (the same sum on every call), so a plan changes nothing but the rounding of the
float32 sums.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from worker.kernels.decode_gemv_config import MAX_ROWS as GEMV_MAX_ROWS

MIN_ROWS = GEMV_MAX_ROWS + 1  # fewer rows go to the decode GEMV
MAX_ROWS = 512  # the largest decode graph; prefill chunks are long enough to fill the card unsplit
ROW_BUCKETS = (64, 128, 256, 512)  # plans are kept per bucket of rows (a launch takes its bucket's)
MAX_SPLIT_K = 8
MIN_K_PER_SPLIT = 1024  # as the decode GEMV's: shorter ranges spend more on partial sums than they gain


@dataclass(frozen=True)
class SplitGemmPlan:
    """One compiled shape: ``block_m`` x ``block_n`` output tiles, ``block_k`` inputs a step, ``split_k``
    programs along K for each tile."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int

    def fields(self) -> str:
        return f"{self.block_m}:{self.block_n}:{self.block_k}:{self.num_warps}:{self.num_stages}:{self.split_k}"


# Plans measured on a card, keyed by (N, K, row bucket): none yet. bench/split_gemm_sweep.py proposes
# them as a WARD_SPLIT_GEMM_PLANS value; until one is measured against cuBLAS the rule below decides.
PLANS: dict[tuple[int, int, int], SplitGemmPlan] = {}


def row_bucket(rows: int) -> int:
    """The smallest bucket that holds ``rows`` (ValueError past MAX_ROWS)."""
    for bucket in ROW_BUCKETS:
        if rows <= bucket:
            return bucket
    raise ValueError(f"the split GEMM takes at most {MAX_ROWS} rows, got {rows}")


def parse_plan_overrides(text: str) -> dict[tuple[int, int, int], SplitGemmPlan]:
    """``WARD_SPLIT_GEMM_PLANS``: ``NxK@ROWS=block_m:block_n:block_k:warps:stages:split_k`` entries,
    separated by commas or semicolons, ROWS one of ROW_BUCKETS. ValueError for a malformed one."""
    plans: dict[tuple[int, int, int], SplitGemmPlan] = {}
    for entry in filter(None, (e.strip() for e in re.split("[,;]", text))):
        try:
            shape, _, fields = entry.partition("=")
            sizes, _, rows = shape.lower().partition("@")
            n, k = (int(v) for v in sizes.split("x"))
            bucket = int(rows)
            plan = SplitGemmPlan(*(int(v) for v in fields.split(":")))
        except (TypeError, ValueError):
            raise ValueError(f"WARD_SPLIT_GEMM_PLANS entry {entry!r} is not "
                             "NxK@ROWS=block_m:block_n:block_k:warps:stages:split_k") from None
        sides = (plan.block_m, plan.block_n, plan.block_k)
        if (bucket not in ROW_BUCKETS or min(n, k, plan.num_warps, plan.num_stages, plan.split_k) < 1
                or min(sides) < 16 or any(s & (s - 1) for s in sides) or plan.split_k > MAX_SPLIT_K):
            raise ValueError(f"WARD_SPLIT_GEMM_PLANS entry {entry!r}: ROWS one of {ROW_BUCKETS}, tile sides powers "
                             f"of two >= 16, split_k 1-{MAX_SPLIT_K}")
        plans[(n, k, bucket)] = plan
    return plans


PLAN_OVERRIDES = parse_plan_overrides(os.environ.get("WARD_SPLIT_GEMM_PLANS", ""))


def choose_plan(rows: int, n: int, k: int, num_sms: int) -> SplitGemmPlan:
    """The plan for ``rows`` rows of x against an [n, k] weight: ``WARD_SPLIT_GEMM_PLANS``'s, the
    table's, else by rule; its split then bounded so that every split covers K."""
    bucket = row_bucket(rows)
    plan = PLAN_OVERRIDES.get((n, k, bucket)) or PLANS.get((n, k, bucket)) or rule_plan(rows, n, k, num_sms)
    return fit_split(plan, k)


def rule_plan(rows: int, n: int, k: int, num_sms: int) -> SplitGemmPlan:
    """A tile Hopper's warpgroup MMA runs whole (64 rows a warpgroup, 128 columns, 64 inputs a step in
    four stages: 96 KiB of shared memory at 128 rows), and the split that fills the card's waves best,
    the fewer splits on a tie, with at least MIN_K_PER_SPLIT inputs a split."""
    block_m = 64 if rows <= 64 else 128
    tiles = -(-rows // block_m) * -(-n // 128)
    best, best_fill = 1, 0.0
    for split in range(1, MAX_SPLIT_K + 1):
        if split > 1 and k < split * MIN_K_PER_SPLIT:
            break
        programs = tiles * split
        fill = programs / (-(-programs // num_sms) * num_sms)
        if fill > best_fill + 1e-9:
            best, best_fill = split, fill
    return SplitGemmPlan(block_m, 128, 64, 4 if block_m == 64 else 8, 4, best)


def k_per_split(k: int, plan: SplitGemmPlan) -> int:
    """Inputs each split covers: a whole number of K steps, the last split possibly shorter."""
    steps = -(-k // plan.block_k)
    return -(-steps // plan.split_k) * plan.block_k


def fit_split(plan: SplitGemmPlan, k: int) -> SplitGemmPlan:
    """``plan`` with no more splits than leave each a non-empty K range."""
    while plan.split_k > 1 and k_per_split(k, plan) * (plan.split_k - 1) >= k:
        plan = replace(plan, split_k=plan.split_k - 1)
    return plan
