"""Each rank reads its own slices of the checkpoint straight from the safetensors files (no rank
holds a full copy of a split tensor; rank 0 loads no other rank's weights).

``shard_reader`` returns the ``read(file, name)`` hook of ``worker.model.loader.load_weights``:
the loader places what it returns exactly as it places a full tensor for one GPU, since the
rank's model was built for its own spec (its fused rows and stacked experts are local sizes)."""
from __future__ import annotations

import re

import torch

from worker.model.loader import _canonical
from worker.model.spec import ModelSpec
from worker.parallel.layers import Shard

_LAYER = re.compile(r"^model\.layers\.\d+\.(.+)$")
_EXPERT = re.compile(r"^(?:block_sparse_moe|mlp)\.experts\.\d+\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")


def shard_reader(spec: ModelSpec, shard: Shard):
    D = spec.head_dim
    q = (shard.rank * shard.heads * D, shard.heads * D)  # (start, length) in the full tensor
    kv = (shard.kv_start * D, shard.kv_heads * D)
    mlp = (shard.rank * shard.intermediate, shard.intermediate)
    expert = (shard.rank * shard.moe_intermediate, shard.moe_intermediate)
    full_q, full_kv = spec.num_heads * D, spec.num_kv_heads * D

    def read(f, name: str) -> torch.Tensor:
        sl = f.get_slice(name)
        canonical = _canonical(name) or name
        if canonical in ("model.embed_tokens.weight", "lm_head.weight"):
            return _vocab_rows(sl, shard)
        m = _LAYER.match(canonical)
        rest = m.group(1) if m else ""
        kind = rest.rpartition(".")[2]
        module = rest.rpartition(".")[0]
        if module == "self_attn.q_proj":
            return _take(sl, 0, *q)
        if module in ("self_attn.k_proj", "self_attn.v_proj"):
            return _take(sl, 0, *kv)
        if module == "self_attn.qkv_proj":  # fused in the checkpoint (Phi-3)
            return torch.cat([_take(sl, 0, *q), _take(sl, 0, full_q + kv[0], kv[1]),
                              _take(sl, 0, full_q + full_kv + kv[0], kv[1])])
        if module in ("mlp.gate_proj", "mlp.up_proj"):
            return _take(sl, 0, *mlp)
        if module == "mlp.gate_up_proj":  # fused in the checkpoint (Phi-3)
            inter = spec.intermediate_size
            return torch.cat([_take(sl, 0, *mlp), _take(sl, 0, inter + mlp[0], mlp[1])])
        if module in ("self_attn.o_proj", "mlp.down_proj"):  # row-parallel: the bias is added once
            return _take(sl, 1, *(q if module == "self_attn.o_proj" else mlp)) if kind == "weight" else _rank0(sl, shard)
        e = _EXPERT.match(rest)
        if e:
            return _take(sl, 1 if e.group(1) in ("w2", "down_proj") else 0, *expert)
        if rest == "mlp.experts.gate_up_proj":  # stacked [E, 2I, hidden], gate rows first
            inter = spec.moe.intermediate_size
            return torch.cat([_take(sl, 1, *expert), _take(sl, 1, inter + expert[0], expert[1])], dim=1)
        if rest == "mlp.experts.down_proj":  # stacked [E, hidden, I]
            return _take(sl, 2, *expert)
        return sl[:]  # replicated: norms, routers, q/k norms

    return read


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
