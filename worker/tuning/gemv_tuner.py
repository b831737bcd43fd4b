"""Tunes the decode GEMV's plans for one model on the card at hand (``ward tune gemv``).

The shapes are the model's own: the model is built on the meta device (no weights read, no memory
taken) as the worker builds it, with its quantization and its tensor-parallel rank's sizes, and
``decode_gemv_shapes`` lists the launches ``use_decode_gemv`` would make of it. Each shape starts
from the plan the worker takes today and walks one axis at a time (``plan_walk.walk``); the winner
is timed again back to back with the starting plan and kept only when it is at least 2% faster,
so noise never replaces a plan. Timings are CUDA-graph replays over enough copies of the weight to
exceed three times the L2 cache: every launch reads its weights from memory, as in the model.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import tempfile
from collections.abc import Callable, Iterable

import torch

from worker.kernels.decode_gemv_config import GemvPlan, _fit_split
from worker.kernels.gemv_tuned import TunedPlan, TunedShape
from worker.tuning.plan_walk import walk

AXES = {"split_k": (1, 2, 3, 4, 6, 8), "block_n": (16, 32, 64), "block_k": (128, 256, 512, 1024, 2048),
        "num_stages": (2, 3, 4, 5, 6, 8), "num_warps": (1, 2, 4, 8)}
# The e4m3-by-e4m3 launches pad x to 64 rows for the warpgroup MMA: wider column tiles, shorter K steps
# (the grid bench/gemv_fp8_math.py searched on an H100, and one step beyond it on each side)
W8A8_AXES = {"split_k": (1, 2, 3, 4), "block_n": (32, 64, 128), "block_k": (64, 128, 256, 512),
             "num_stages": (2, 3, 4, 5), "num_warps": (4, 8)}
KEEP_IF_FASTER = 0.98  # the winner against the starting plan, timed again back to back

PlanTimer = Callable[[GemvPlan], "float | None"]


def model_shapes(model: str, quantization: str = "auto", tensor_parallel_size: int = 1,
                 dtype: str = "auto") -> list[TunedShape]:
    """The GEMV launch shapes of ``model`` (a model directory, a packaged model's name or a benchmark
    shape such as ``llama-3.1-8b``) as a worker with these settings runs it on CUDA (rank 0's sizes
    under tensor parallelism). ModelLoadError or ValueError for a model or settings it cannot build."""
    from worker.attention.backend import get_backend
    from worker.model.decode_linear import decode_gemv_shapes
    from worker.model.loader import build_model
    from worker.model.quant.apply import finalize_quantized, quantize_model
    from worker.model.quant.config import resolve_quant_config
    from worker.model.spec import load_spec
    from worker.runner.device import pick_dtype

    with tempfile.TemporaryDirectory() as scratch:
        spec = load_spec(_model_dir(model, scratch))
    if tensor_parallel_size > 1:
        from worker.parallel.layers import plan_shard, shard_spec

        spec = shard_spec(spec, plan_shard(spec, 0, tensor_parallel_size))
    qc = resolve_quant_config(quantization, spec.hf_config)
    torch_dtype = pick_dtype(dtype, torch.device("cuda"), spec.config_dtype)
    meta = torch.device("meta")
    built = build_model(spec, get_backend("torch", torch.device("cpu")), meta, torch_dtype, 4096,
                        prepare=lambda m: quantize_model(m, spec, qc))
    if qc is not None and not qc.from_checkpoint:  # FP8 at load: the projections become e4m3 here
        finalize_quantized(built, spec, qc)  # (a checkpoint's layers are already its format's, and
        # their finalize reads values, which meta tensors do not have)
    return decode_gemv_shapes(built)


def _model_dir(model: str, scratch: str) -> str:
    from ward.benchmarks.models import SHAPES, write_config_dir

    if model in SHAPES:
        return write_config_dir(model, scratch)
    from worker.model.registry import resolve_model

    return resolve_model(model)


def tune_shape(shape: TunedShape, start: GemvPlan, time_plan: PlanTimer) -> tuple[TunedPlan, list[dict]]:
    """The shape's plan after a walk from ``start`` (``time_plan``: microseconds a launch, None for a
    plan that cannot run), and every plan tried. The walk's winner replaces ``start`` only when,
    timed again back to back with it, it is at least 2% faster."""
    axes = W8A8_AXES if shape.e4m3_x else AXES
    best, _, trials = walk(time_plan, start, axes, functools.partial(_fit_split, k=shape.k))
    start_us = time_plan(start)
    if best == start:
        return TunedPlan(shape, start, start_us, start_us), trials
    best_us = time_plan(best)
    if best_us is not None and (start_us is None or best_us < start_us * KEEP_IF_FASTER):
        return TunedPlan(shape, best, best_us, start_us), trials
    return TunedPlan(shape, start, start_us, start_us), trials


def improved(plans: Iterable[TunedPlan]) -> list[TunedPlan]:
    """The plans that differ from where their walk started (the ones worth writing down)."""
    return [p for p in plans if p.us is not None and p.start_us is not None and p.us < p.start_us]


class GemvTimer:
    """Weights and inputs of one shape on the current CUDA device, and the timer of a plan on them."""

    def __init__(self, shape: TunedShape, l2_bytes: int, dtype: torch.dtype = torch.bfloat16) -> None:
        rows = 2 * shape.n if shape.silu else shape.n
        weight_bytes = rows * shape.k * shape.weight_bytes
        copies = max(2, math.ceil(3 * l2_bytes / weight_bytes))
        self.shape, self.dtype = shape, dtype
        self.weights = [torch.randn(rows, shape.k, dtype=dtype, device="cuda") * shape.k**-0.5 for _ in range(copies)]
        self.scales: list[torch.Tensor] | None = None
        if shape.weight_bytes == 1:
            from worker.model.quant.linear import quantize_fp8_per_channel

            quantized = [quantize_fp8_per_channel(w) for w in self.weights]
            self.weights = [q for q, _ in quantized]
            self.scales = [s.reshape(-1) for _, s in quantized]
        self.floor_bytes = weight_bytes
        self.last_refusal = ""  # why the last plan that could not run was refused

    def time(self, plan: GemvPlan, rows: int | None = None) -> float | None:
        """Microseconds a launch of ``rows`` rows (default: the shape's row class), or None when the
        plan does not compile or launch (shared memory, registers)."""
        from worker.kernels.decode_gemv import W8A8_BLOCK_M, decode_gemv, reserve_workspace
        from worker.kernels.decode_gemv_config import BLOCK_M
        from worker.tuning.graph_timing import timed_us

        rows = rows or self.shape.rows
        x = torch.randn(rows, self.shape.k, dtype=self.dtype, device="cuda")
        x_scale = None
        if self.shape.e4m3_x:
            x_scale = torch.full((rows,), 1 / 64, dtype=torch.float32, device="cuda")
            x = (x * 64).to(torch.float8_e4m3fn)
        out = torch.empty(rows, self.shape.n, dtype=self.dtype, device="cuda")
        block_m = W8A8_BLOCK_M if self.shape.e4m3_x else BLOCK_M
        try:
            for w in self.weights:
                reserve_workspace(w, self.shape.silu, plan, block_m)

            def calls() -> None:
                for i, w in enumerate(self.weights):
                    decode_gemv(x, w, silu=self.shape.silu, plan=plan, out=out, x_scale=x_scale,
                                weight_scale=None if self.scales is None else self.scales[i])

            per_replay = max(1, 60 // len(self.weights))
            return timed_us(calls, iters=per_replay) / len(self.weights)
        except Exception as error:  # noqa: BLE001 - a plan that cannot run is skipped; the walk goes on
            self.last_refusal = f"{dataclasses.astuple(plan)}: {type(error).__name__}: {str(error)[:120]}"
            return None


def start_plan(shape: TunedShape, device: torch.device) -> GemvPlan:
    """The plan a worker on ``device`` takes for the shape now (its tuned file included)."""
    from worker.kernels.attention import num_sms
    from worker.kernels.decode_gemv import device_name, shared_memory_limit
    from worker.kernels.decode_gemv_config import choose_plan, choose_w8a8_plan
    from worker.kernels.gemv_tuned import tuned_table

    tuned = tuned_table(device_name(device))
    if shape.e4m3_x:
        return choose_w8a8_plan(shape.n, shape.k, shape.silu, shape.rows, tuned)
    return choose_plan(shape.n, shape.k, num_sms(device), shape.silu, shape.weight_bytes,
                       shared_memory_limit(device), shape.rows, tuned)
