"""GGUF Q4_0 / Q4_1 / Q8_0 / Q4_K projection weights into Ward's integer layout (``packing``), kept
quantized instead of expanded to float.

A GGUF row of W [out, in] is a run of 32-weight blocks: Q8_0 is a float16 scale d and 32 int8
(w = d * q), Q4_0 a float16 d and 16 bytes whose low nibbles are weights 0..15 and high nibbles
16..31 (w = d * (q - 8)), Q4_1 a float16 d and a float16 minimum m before the same nibbles
(w = d * q + m). Each maps to group size 32: Q8_0 to 8-bit with zero 128, Q4_0 to 4-bit with zero
8, Q4_1 to 4-bit with float offsets m.

Q4_K (the 4-bit K-quant of Q4_K_M/Q4_K_S files) is a 256-weight super-block: float16 d and dmin,
12 bytes of 6-bit scales sc and mins m for its eight 32-weight sub-blocks, and 128 bytes of
nibbles (each 32 bytes hold two sub-blocks: low nibbles the first, high the second); w = d * sc * q
- dmin * m. It maps to group size 32, 4-bit, with scale d * sc and offset -dmin * m, held in float32
(the products are not float16 numbers).
"""
from __future__ import annotations

import numpy as np
import torch

from worker.errors import ModelLoadError

GROUP = 32
_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}  # per 32-weight block
Q4_K_BYTES, Q4_K_WEIGHTS = 144, 256  # per super-block
KEPT = ("Q4_0", "Q4_1", "Q8_0", "Q4_K")


def block_layout(kind: str) -> tuple[int, str]:
    """(bits, zero_format) of Ward's layout for a GGUF block type."""
    return {"Q4_0": (4, "int"), "Q4_1": (4, "offset"), "Q8_0": (8, "int"), "Q4_K": (4, "offset")}[kind]


def _q4_k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 bytes of a Q4_K super-block -> its eight 6-bit scales and mins ([..., 8] each): sub-blocks
    0..3 in the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); 4..7 in the nibbles of bytes 8..11
    with their top 2 bits in the top bits of bytes 0..7."""
    b = packed.astype(np.int32)
    sc = np.empty(packed.shape[:-1] + (8,), dtype=np.int32)
    mn = np.empty_like(sc)
    sc[..., :4] = b[..., 0:4] & 63
    mn[..., :4] = b[..., 4:8] & 63
    sc[..., 4:] = (b[..., 8:12] & 0x0F) | ((b[..., 0:4] >> 6) << 4)
    mn[..., 4:] = (b[..., 8:12] >> 4) | ((b[..., 4:8] >> 6) << 4)
    return sc, mn


def _q4_k_to_ward(raw: np.ndarray, out_features: int, in_features: int) -> dict[str, torch.Tensor]:
    from worker.model.quant.packing import pack_rows

    if in_features % Q4_K_WEIGHTS:
        raise ModelLoadError(f"in_features {in_features} is not a multiple of Q4_K's 256-weight super-blocks")
    nb = in_features // Q4_K_WEIGHTS
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(out_features, nb, Q4_K_BYTES)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # [out, nb]
    dmin = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    sc, mn = _q4_k_scales_mins(blocks[..., 4:16])  # [out, nb, 8]
    qs = blocks[..., 16:].reshape(out_features, nb, 4, 32)  # four 32-byte runs, two sub-blocks each
    q = np.stack([qs & 0x0F, qs >> 4], axis=3).reshape(out_features, in_features).astype(np.int32)
    # [out, groups], float32 products as ggml computes them
    scales = (d[..., None] * sc.astype(np.float32)).reshape(out_features, nb * 8)
    offsets = -(dmin[..., None] * mn.astype(np.float32)).reshape(out_features, nb * 8)
    q_t = torch.from_numpy(q).t().contiguous()  # [in, out]
    return {"qweight": pack_rows(q_t, 4), "scales": torch.from_numpy(scales).t().contiguous(),
            "offsets": torch.from_numpy(offsets).t().contiguous()}


def to_ward(raw: np.ndarray, kind: str, out_features: int, in_features: int,
            zero_format: str | None = None) -> dict[str, torch.Tensor]:
    """Raw GGUF blocks (uint8, ``out_features`` rows) -> {qweight, scales, zeros | offsets}.

    ``zero_format="offset"`` writes Q4_0's zero 8 as an offset (-8 d), so Q4_0 and Q4_1 projections
    of one file share a layout."""
    from worker.model.quant.packing import pack_rows

    if kind == "Q4_K":
        return _q4_k_to_ward(raw, out_features, in_features)
    if kind not in _BYTES:
        raise ModelLoadError(f"GGUF block type {kind} cannot be kept quantized ({', '.join(KEPT)})")
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
