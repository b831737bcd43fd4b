"""Integer packing of quantized weights: the checkpoint layouts (AWQ, GPTQ) and Ward's own.

Ward's INT4/INT8 layout, the one every kernel reads: ``qweight`` int32 [in / pack, out] with the
values of ``pack = 32 // bits`` consecutive input rows in one word, lowest bits first;
``scales`` [groups, out] and ``zeros`` uint8 [groups, out] (a weight is ``(q - zero) * scale``), or
instead of zeros float ``offsets`` [groups, out] (a weight is ``q * scale + offset``: GGUF's Q4_1);
input rows sorted by group (act-order checkpoints carry the permutation ``perm`` so that
``y = x[:, perm] @ W``), so input row r belongs to group ``r // group_size``.
"""
from __future__ import annotations

import torch

from worker.model.quant.config import AWQ_ORDER


def unpack_cols(packed: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """int32 [R, C / pack] -> int32 [R, C]: word c holds columns c*pack .. c*pack+pack-1, field i of a
    word holding column ``order[i]`` (sequential when ``order`` is None)."""
    pack = 32 // bits
    shifts = torch.arange(pack, device=packed.device, dtype=torch.int32) * bits
    fields = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [R, C/pack, pack], field i
    if order is not None:
        inverse = [0] * pack
        for i, col in enumerate(order):
            inverse[col] = i
        fields = fields[..., inverse]
    return fields.reshape(packed.shape[0], -1)


def pack_cols(values: torch.Tensor, bits: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """The inverse of ``unpack_cols``: int [R, C] -> int32 [R, C / pack]."""
    pack = 32 // bits
    v = values.to(torch.int32).reshape(values.shape[0], -1, pack)
    if order is not None:
        v = v[..., list(order)]
    out = torch.zeros(v.shape[:2], dtype=torch.int32, device=values.device)
    for i in range(pack):
        out |= v[..., i] << (bits * i)
    return out


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R / pack, C] -> int32 [R, C], input rows packed lowest bits first."""
    return unpack_cols(packed.t().contiguous(), bits).t().contiguous()


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int [R, C] -> int32 [R / pack, C] (R a multiple of the pack factor)."""
    return pack_cols(values.t().contiguous(), bits).t().contiguous()


def awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    """AWQ's GEMM packing (4-bit, columns in the order 0,2,4,6,1,3,5,7 inside a word) -> [R, C]."""
    return unpack_cols(packed, 4, AWQ_ORDER)


def awq_pack(values: torch.Tensor) -> torch.Tensor:
    return pack_cols(values, 4, AWQ_ORDER)


def group_order(g_idx: torch.Tensor, group_size: int, num_groups: int) -> torch.Tensor | None:
    """The permutation that sorts input rows by group, or None when they already are in order
    (``g_idx[r] == r // group_size``). Raises ValueError when a group does not hold exactly
    ``group_size`` rows (a malformed g_idx)."""
    g_idx = g_idx.to(torch.int64)
    rows = g_idx.numel()
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= num_groups:
        raise ValueError(f"values outside [0, {num_groups})")
    counts = torch.bincount(g_idx, minlength=num_groups)
    expected = torch.full((num_groups,), group_size, dtype=torch.int64, device=g_idx.device)
    expected[-1] = rows - group_size * (num_groups - 1)
    if not torch.equal(counts, expected):
        raise ValueError(f"each group must hold {group_size} input rows")
    if torch.equal(g_idx, torch.arange(rows, device=g_idx.device) // group_size):
        return None
    return torch.argsort(g_idx, stable=True)


def dequantize_int(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
                   group_size: int, dtype: torch.dtype, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Ward's layout -> W [in, out] in ``dtype`` (rows in group order): the reference of the kernels."""
    q = unpack_rows(qweight, bits)  # [in, out]
    groups = torch.arange(q.shape[0], device=q.device) // group_size
    if offsets is not None:
        w = q.float() * scales.float()[groups] + offsets.float()[groups]
    else:
        w = (q - zeros.to(torch.int32)[groups]).float() * scales.float()[groups]
    return w.to(dtype)
