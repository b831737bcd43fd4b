"""GGUF Q4_0 / Q4_1 / Q8_0 projection weights into Ward's integer layout (``packing``), kept
quantized instead of expanded to float.

A GGUF row of W [out, in] is a run of 32-weight blocks: Q8_0 is a float16 scale d and 32 int8
(w = d * q), Q4_0 a float16 d and 16 bytes whose low nibbles are weights 0..15 and high nibbles
16..31 (w = d * (q - 8)), Q4_1 a float16 d and a float16 minimum m before the same nibbles
(w = d * q + m). Each maps to group size 32: Q8_0 to 8-bit with zero 128, Q4_0 to 4-bit with zero
8, Q4_1 to 4-bit with float offsets m.
"""
from __future__ import annotations

import numpy as np
import torch

from worker.errors import ModelLoadError

GROUP = 32
_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}  # per 32-weight block


def block_layout(kind: str) -> tuple[int, str]:
    """(bits, zero_format) of Ward's layout for a GGUF block type."""
    return {"Q4_0": (4, "int"), "Q4_1": (4, "offset"), "Q8_0": (8, "int")}[kind]


def to_ward(raw: np.ndarray, kind: str, out_features: int, in_features: int,
            zero_format: str | None = None) -> dict[str, torch.Tensor]:
    """Raw GGUF blocks (uint8, ``out_features`` rows) -> {qweight, scales, zeros | offsets}.

    ``zero_format="offset"`` writes Q4_0's zero 8 as an offset (-8 d), so Q4_0 and Q4_1 projections
    of one file share a layout."""
    from worker.model.quant.packing import pack_rows

    if kind not in _BYTES:
        raise ModelLoadError(f"GGUF block type {kind} cannot be kept quantized (Q4_0, Q4_1, Q8_0)")
    if in_features % GROUP:
        raise ModelLoadError(f"in_features {in_features} is not a multiple of GGUF's 32-weight blocks")
    nb = in_features // GROUP
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(out_features, nb, _BYTES[kind])
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0]  # [out, nb]
    if kind == "Q8_0":
        q = blocks[..., 2:].copy().view(np.int8).astype(np.int32) + 128  # [out, nb, 32]
        zero = 128
    else:
        nibbles = blocks[..., 4:] if kind == "Q4_1" else blocks[..., 2:]
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1).astype(np.int32)  # weights 0..15, 16..31
        zero = 8
    bits, fmt = block_layout(kind)
    fmt = zero_format or fmt
    q_t = torch.from_numpy(q.reshape(out_features, in_features)).t().contiguous()  # [in, out]
    scales = torch.from_numpy(d.astype(np.float16)).t().contiguous()  # [groups, out]
    tensors = {"qweight": pack_rows(q_t, bits), "scales": scales}
    if kind == "Q4_1":
        m = blocks[..., 2:4].copy().view(np.float16)[..., 0]
        tensors["offsets"] = torch.from_numpy(m.astype(np.float16)).t().contiguous()
    elif fmt == "offset":
        tensors["offsets"] = (-zero * scales.float()).half()
    else:
        tensors["zeros"] = torch.full(scales.shape, zero, dtype=torch.uint8)
    return tensors


def row_order_of_rope_permute(rows: int, heads: int) -> np.ndarray:
    """The row order transformers applies to a Llama-family GGUF's q/k weight (GGUF interleaves
    the rotary halves of each head): output row i of the HF weight is GGUF row order[i]."""
    dim = rows // heads // 2
    idx = np.arange(rows).reshape(heads, dim, 2)
    return idx.swapaxes(2, 1).reshape(rows)
