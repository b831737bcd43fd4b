"""A rank's share of the model, and the layers that join the shares.

Megatron-style split, with one all-reduce per attention and per MLP:
- qkv and gate/up are column-parallel: rank r holds its query heads, its KV heads and its slice of
  the MLP's intermediate columns, so attention and the activation need no communication;
- o and down (and each expert's down in a sparse MoE) are row-parallel: every rank computes a
  partial sum over its columns, summed by one all-reduce (a bias is added by rank 0 alone);
- the embedding and the LM head are vocab-parallel: rank r holds a contiguous slice of the
  (padded) vocabulary; an embedding lookup is masked and all-reduced, the logits all-gathered.

KV heads are split like query heads; with fewer KV heads than ranks each KV head is replicated on
the ranks whose query heads read it. The model is built for the rank's spec (``shard_spec``), so
the model files stay unaware of parallelism; ``parallelize`` then swaps in the joining layers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worker.errors import ModelLoadError
from worker.model.quant.config import resolve_quant_config
from worker.model.spec import ModelSpec
from worker.parallel.group import ParallelGroup
from worker.parallel.quant_split import check_split


@dataclass(frozen=True)
class Shard:
    """Where rank ``rank`` of ``size`` sits in each split dimension of the full model."""

    rank: int
    size: int
    heads: int  # query heads per rank
    kv_heads: int  # KV heads per rank (1 when replicated)
    kv_start: int  # this rank's first KV head in the checkpoint
    intermediate: int  # dense MLP columns per rank
    moe_intermediate: int  # columns of each expert per rank
    vocab: int  # vocabulary rows per rank (the vocabulary padded to a multiple of size)
    full_vocab: int


def plan_shard(spec: ModelSpec, rank: int, size: int) -> Shard:
    """The split for ``rank``; ModelLoadError when the model's shape (or its quantized checkpoint's
    packing, groups or scale blocks) cannot be split ``size`` ways."""
    H, KV = spec.num_heads, spec.num_kv_heads
    if H % size:
        raise ModelLoadError(f"tensor_parallel_size {size} must divide the {H} attention heads")
    if KV % size and size % KV:
        raise ModelLoadError(f"{KV} KV heads can neither be split nor replicated over {size} ranks")
    dense = spec.moe is None or not all(spec.moe.layers)
    if dense and spec.intermediate_size % size:
        raise ModelLoadError(f"tensor_parallel_size {size} must divide intermediate_size {spec.intermediate_size}")
    if spec.moe is not None and spec.moe.intermediate_size % size:
        raise ModelLoadError(f"tensor_parallel_size {size} must divide the experts' intermediate size "
                             f"{spec.moe.intermediate_size}")
    check_split(spec, resolve_quant_config("auto", spec.hf_config), size)
    heads = H // size
    if KV >= size:
        kv_heads, kv_start = KV // size, rank * (KV // size)
    else:  # replicated: the KV head this rank's query heads belong to
        kv_heads, kv_start = 1, (rank * heads) // (H // KV)
    vocab = -(-spec.vocab_size // size)
    return Shard(rank, size, heads, kv_heads, kv_start, spec.intermediate_size // size,
                 spec.moe.intermediate_size // size if spec.moe else 0, vocab, spec.vocab_size)


def shard_spec(spec: ModelSpec, shard: Shard) -> ModelSpec:
    """The spec of the rank's part: its heads, columns and vocabulary rows (KV pool shapes follow)."""
    moe = dataclasses.replace(spec.moe, intermediate_size=shard.moe_intermediate) if spec.moe else None
    return dataclasses.replace(spec, num_heads=shard.heads, num_kv_heads=shard.kv_heads,
                               intermediate_size=shard.intermediate if shard.intermediate else spec.intermediate_size,
                               vocab_size=shard.vocab, moe=moe)


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + n) of the embedding; other ids look up zeros, summed over the ranks."""

    def __init__(self, weight: nn.Parameter, start: int, group: ParallelGroup):
        super().__init__()
        self.weight = weight
        self.start, self.group = start, group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return self.group.all_reduce(out)


def parallelize(model: nn.Module, shard: Shard, group: ParallelGroup) -> nn.Module:
    """Swaps in the joining layers; parameter names stay those of the single-GPU model."""
    reduce = lambda module, args, out: group.all_reduce(out)  # noqa: E731
    for layer in model.layers:
        layer.self_attn.o_proj.register_forward_hook(reduce)
        mlp = layer.mlp
        (mlp.down_proj if hasattr(mlp, "down_proj") else mlp).register_forward_hook(reduce)  # dense | sparse MoE
    model.embed_tokens = VocabParallelEmbedding(model.embed_tokens.weight, shard.rank * shard.vocab, group)
    local_logits = model.compute_logits

    def compute_logits(hidden: torch.Tensor) -> torch.Tensor:  # [N, vocab]: every rank's slice, gathered
        return group.all_gather_last(local_logits(hidden))[:, : shard.full_vocab]

    model.compute_logits = compute_logits
    return model


@dataclass
class RankPart:
    """What a rank's model runner needs: its split, its group, its spec and its checkpoint reader."""

    shard: Shard
    group: ParallelGroup
    spec: ModelSpec  # the rank's part (heads, columns, vocabulary rows)
    read: object  # read(file, name) -> the rank's slice of a checkpoint tensor


def rank_part(spec: ModelSpec, group: ParallelGroup, quantization: str = "auto") -> RankPart:
    """``quantization`` as configured: the reader slices the checkpoint's quantized tensors by its format."""
    from worker.parallel.loading import shard_reader

    shard = plan_shard(spec, group.rank, group.size)
    qc = resolve_quant_config(quantization, spec.hf_config)
    return RankPart(shard, group, shard_spec(spec, shard), shard_reader(spec, shard, qc))
