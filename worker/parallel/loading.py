"""Each rank reads its own slices of the checkpoint straight from the safetensors files (no rank
holds a full copy of a split tensor; rank 0 loads no other rank's weights).

``shard_reader`` returns the ``read(file, name)`` hook of ``worker.model.loader.load_weights``:
the loader places what it returns exactly as it places a full tensor for one GPU, since the
rank's model was built for its own spec (its fused rows and stacked experts are local sizes)."""
from __future__ import annotations

import re

import torch

from worker.model.loader import _canonical
from worker.model.quant.config import QuantConfig
from worker.model.spec import ModelSpec
from worker.parallel.layers import Shard
from worker.parallel.quant_split import take_in, take_out

_LAYER = re.compile(r"^model\.layers\.\d+\.(.+)$")
_EXPERT = re.compile(r"^(?:block_sparse_moe|mlp)\.experts\.\d+\.(w1|w2|w3|gate_proj|up_proj|down_proj)\."
                     r"(weight|weight_scale_inv|weight_scale|input_scale)$")
_KV_SCALES = ("k_scale", "v_scale")


def shard_reader(spec: ModelSpec, shard: Shard, qc: QuantConfig | None = None):
    """``read(file, name)``: the rank's slice of a checkpoint tensor. ``qc`` is the checkpoint's
    quantization (None for float weights or FP8 at load): it says along which axis, and in which
    units, each quantized tensor holds the rows being split (``quant_split``)."""
    D = spec.head_dim
    q = (shard.rank * shard.heads * D, shard.heads * D)  # (start, length) in the full tensor
    kv = (shard.kv_start * D, shard.kv_heads * D)
    mlp = (shard.rank * shard.intermediate, shard.intermediate)
    expert = (shard.rank * shard.moe_intermediate, shard.moe_intermediate)
    full_q, full_kv = spec.num_heads * D, spec.num_kv_heads * D
    inter = spec.intermediate_size
    column = {  # column-parallel checkpoint modules: the output rows of each, fused ones per part
        "self_attn.q_proj": [q], "self_attn.k_proj": [kv], "self_attn.v_proj": [kv],
        "self_attn.qkv_proj": [q, (full_q + kv[0], kv[1]), (full_q + full_kv + kv[0], kv[1])],  # Phi-3
        "mlp.gate_proj": [mlp], "mlp.up_proj": [mlp],
        "mlp.gate_up_proj": [mlp, (inter + mlp[0], mlp[1])],  # Phi-3
    }
    row = {"self_attn.o_proj": q, "mlp.down_proj": mlp}

    def read(f, name: str) -> torch.Tensor:
        sl = f.get_slice(name)
        canonical = _canonical(name) or name
        if canonical in ("model.embed_tokens.weight", "lm_head.weight"):
            return _vocab_rows(sl, shard)
        m = _LAYER.match(canonical)
        rest = m.group(1) if m else ""
        module, _, kind = rest.rpartition(".")
        if kind in _KV_SCALES:  # FP8 KV cache scales: the rank's KV heads when there is one per head
            return _kv_heads(f.get_tensor(name), shard, spec.num_kv_heads)
        if module in column:
            return take_out(sl, name, qc, kind, column[module])
        if module in row:  # row-parallel: the bias is added once
            return take_in(sl, name, qc, kind, *row[module]) if kind != "bias" else _rank0(sl, shard)
        e = _EXPERT.match(rest)
        if e:
            if e.group(1) in ("w2", "down_proj"):
                return take_in(sl, name, qc, e.group(2), *expert)
            return take_out(sl, name, qc, e.group(2), [expert])
        if rest == "mlp.experts.gate_up_proj":  # stacked [E, 2I, hidden], gate rows first
            moe_inter = spec.moe.intermediate_size
            return torch.cat([_take(sl, 1, *expert), _take(sl, 1, moe_inter + expert[0], expert[1])], dim=1)
        if rest == "mlp.experts.down_proj":  # stacked [E, hidden, I]
            return _take(sl, 2, *expert)
        return sl[:]  # replicated: norms, routers, q/k norms

    return read


def _kv_heads(t: torch.Tensor, shard: Shard, full_kv: int) -> torch.Tensor:
    """A per-head KV scale: the rank's KV heads (a per-tensor one is the same on every rank)."""
    flat = t.reshape(-1)
    if flat.numel() != full_kv or full_kv == 1:
        return t
    return flat[shard.kv_start : shard.kv_start + shard.kv_heads].clone()


def _take(sl, dim: int, start: int, length: int) -> torch.Tensor:
    index = (slice(None),) * dim + (slice(start, start + length),)
    return sl[index]


def _rank0(sl, shard: Shard) -> torch.Tensor:
    full = sl[:]
    return full if shard.rank == 0 else torch.zeros_like(full)


def _vocab_rows(sl, shard: Shard) -> torch.Tensor:
    """The rank's vocabulary rows; rows past the real vocabulary (padding) are zeros."""
    start = shard.rank * shard.vocab
    end = min(start + shard.vocab, shard.full_vocab)
    rows = _take(sl, 0, start, max(end - start, 0))
    if rows.shape[0] < shard.vocab:
        pad = torch.zeros((shard.vocab - rows.shape[0], *rows.shape[1:]), dtype=rows.dtype)
        rows = torch.cat([rows, pad])
    return rows
