"""How a projection's checkpoint tensors split over tensor-parallel ranks, float or quantized.

W is [out, in]. A column-parallel projection (q/k/v, gate/up, an expert's gate/up) takes output
rows of W, a row-parallel one (o, down, an expert's down) input rows. Each tensor of a format
carries those rows along one of its axes, in a unit: one step along the axis covers ``unit`` rows
of W (a packed int32 word of 8 AWQ columns, a group of ``group_size`` input rows, a 128-row FP8
scale block). A rank's slice must start and end on whole units, or the rank would need part of a
word, a group or a block: ``check_split`` refuses such shapes before any rank starts, and
``take_out`` / ``take_in`` refuse them again while reading (a checkpoint that disagrees with its
config).

Tensors without the axis are replicated: per-tensor FP8 scales and static input scales, GPTQ's
``g_idx`` of a column-parallel layer (its input is whole on every rank), the one group of
``group_size: -1`` and per-output-channel scales of a row-parallel layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.errors import ModelLoadError
from worker.model.quant.config import QuantConfig


@dataclass(frozen=True)
class Axis:
    """Where a tensor holds W's rows being split: its dimension (None: replicated) and the rows of W
    one index along it covers."""

    dim: int | None
    unit: int = 1


REPLICATED = Axis(None)


def _pack(qc: QuantConfig) -> int:
    return 32 // qc.bits


def out_axis(qc: QuantConfig | None, kind: str) -> Axis:
    """The axis of W's output rows in a tensor of ``kind`` (weight, qweight, scales, ...)."""
    if kind == "bias" or qc is None:
        return Axis(0) if kind in ("weight", "bias") else REPLICATED
    if qc.is_fp8:
        if kind == "weight":
            return Axis(0)
        if kind == "weight_scale_inv" and qc.block_size:
            return Axis(0, qc.block_size[0])
        if kind == "weight_scale" and qc.method == "fp8_channel":
            return Axis(0)
        return REPLICATED  # per-tensor and static input scales
    if qc.method == "awq":  # qweight/qzeros [*, out / 8]: eight output columns a word
        return {"qweight": Axis(1, 8), "qzeros": Axis(1, 8), "scales": Axis(1)}.get(kind, REPLICATED)
    if qc.method == "gptq":  # qweight [in / pack, out]; qzeros [groups, out / pack]
        return {"qweight": Axis(1), "qzeros": Axis(1, _pack(qc)), "scales": Axis(1)}.get(kind, REPLICATED)
    if kind in ("qweight", "scales", "zeros", "offsets"):  # ward_int: every tensor [*, out]
        return Axis(1)
    return REPLICATED


def in_axis(qc: QuantConfig | None, kind: str) -> Axis:
    """The axis of W's input rows in a tensor of ``kind`` (the bias is not split: rank 0 adds it)."""
    if qc is None or qc.is_fp8:
        if kind == "weight":
            return Axis(1)
        if kind == "weight_scale_inv" and qc is not None and qc.block_size:
            return Axis(1, qc.block_size[1])
        return REPLICATED  # per-channel scales are per output row; per-tensor scales are one value
    one_group = qc.group_size <= 0  # its scales and zeros serve every input row: replicated
    group = REPLICATED if one_group else Axis(0, qc.group_size)
    if kind == "qweight":
        return Axis(0) if qc.method == "awq" else Axis(0, _pack(qc))
    if kind in ("qzeros", "scales", "zeros", "offsets"):
        return group
    if kind == "g_idx":
        return Axis(0)
    return REPLICATED


def _take(sl, name: str, axis: Axis, start: int, length: int) -> torch.Tensor:
    if start % axis.unit or length % axis.unit:
        raise ModelLoadError(f"{name}: rows {start}..{start + length} of a tensor-parallel rank do not fall on "
                             f"whole units of {axis.unit} along dimension {axis.dim}")
    index = (slice(None),) * axis.dim + (slice(start // axis.unit, (start + length) // axis.unit),)
    return sl[index]


def take_out(sl, name: str, qc: QuantConfig | None, kind: str, ranges: list[tuple[int, int]]) -> torch.Tensor:
    """A column-parallel rank's part: the output rows ``ranges`` ((start, length) in W, several for a
    fused checkpoint tensor), concatenated in order."""
    axis = out_axis(qc, kind)
    if axis.dim is None:
        return sl[:]
    parts = [_take(sl, name, axis, start, length) for start, length in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=axis.dim)


def take_in(sl, name: str, qc: QuantConfig | None, kind: str, start: int, length: int) -> torch.Tensor:
    """A row-parallel rank's part: W's input rows [start, start + length)."""
    axis = in_axis(qc, kind)
    if axis.dim is None:
        return sl[:]
    part = _take(sl, name, axis, start, length)
    if kind == "g_idx":  # the rank's rows, numbered from its own first group
        return part - start // qc.group_size if qc.group_size > 0 else torch.zeros_like(part)
    return part


# ---- before any rank starts --------------------------------------------------------------------
def _units(qc: QuantConfig) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(output units, input units) a rank's rows must be whole multiples of, each with its field."""
    if qc.is_fp8:
        if not qc.block_size:
            return [], []
        field = f"quantization_config.weight_block_size {list(qc.block_size)}"
        return [(qc.block_size[0], field)], [(qc.block_size[1], field)]
    pack = (_pack(qc), f"{qc.bits}-bit packing ({_pack(qc)} values per int32 word)")
    outs = [] if qc.method == "ward_int" else [(8 if qc.method == "awq" else _pack(qc), pack[1])]
    ins = [] if qc.method == "awq" else [pack]
    if qc.group_size > 0:
        ins.append((qc.group_size, f"quantization_config.group_size {qc.group_size}"))
    return outs, ins


def check_split(spec, qc: QuantConfig | None, size: int) -> None:
    """ModelLoadError when a quantized checkpoint's tensors cannot be split ``size`` ways: a rank's
    rows would cut a packed word, a group or a scale block, or (GPTQ act-order) its input rows would
    take part of many groups."""
    if qc is None or size == 1 or qc.method == "fp8":  # FP8 at load: per-channel scales split anywhere
        return
    if qc.desc_act:
        raise ModelLoadError(
            f"quantization_config.desc_act = true (GPTQ act-order) is not supported with tensor_parallel_size "
            f"{size}: g_idx scatters each group's input rows over the whole input, so a row-parallel rank (o_proj, "
            "down_proj) would hold part of nearly every group, which Ward's INT4 layout (whole groups of "
            "consecutive rows) cannot express; serve it with tensor_parallel_size 1 or use a checkpoint without "
            "act-order")
    D = spec.head_dim
    heads, kv = spec.num_heads // size, max(spec.num_kv_heads // size, 1)
    dense = spec.moe is None or not all(spec.moe.layers)
    cols = [("q_proj", heads * D), ("k_proj/v_proj", kv * D)]
    rows = [("o_proj", heads * D)]
    if dense:
        cols.append(("gate_proj/up_proj", spec.intermediate_size // size))
        rows.append(("down_proj", spec.intermediate_size // size))
    if spec.moe is not None and any(spec.moe.layers):
        cols.append(("experts' gate/up", spec.moe.intermediate_size // size))
        rows.append(("experts' down", spec.moe.intermediate_size // size))
    outs, ins = _units(qc)
    for units, sizes, what in ((outs, cols, "output rows"), (ins, rows, "input rows")):
        for unit, field in units:
            for module, n in sizes:
                if n % unit:
                    raise ModelLoadError(f"tensor_parallel_size {size}: each rank's {n} {what} of {module} are not a "
                                         f"multiple of {field}")
