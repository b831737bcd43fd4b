"""Applies a ``QuantConfig`` to a built model: a walk over its decoder layers that swaps the
projection layers, before (checkpoint formats) or after (FP8 at load) the weights are read.

Only the decoder's projections and MoE experts are quantized (qkv, o, gate_up, down, the stacked
experts); embeddings, norms, the LM head and MoE routers stay in the model's dtype. MoE experts
take FP8 (``quant/moe.py``); 4-bit MoE checkpoints are refused.
"""
from __future__ import annotations

import torch
from torch import nn

from worker.errors import ModelLoadError
from worker.model.quant.config import QuantConfig
from worker.model.moe import SparseMoe
from worker.model.quant.linear import AmaxReduce, Fp8Linear, IntLinear, QuantLinear
from worker.model.quant.moe import Fp8SparseMoe

# our fused module -> the checkpoint projections it holds, in row order
_CHECKPOINT_NAMES = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}


def _shards(spec, ours: str) -> list[int]:
    q, kv, inter = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim, spec.intermediate_size
    return {"self_attn.qkv_proj": [q, kv, kv], "mlp.gate_up_proj": [inter, inter]}.get(ours, [])


def _projections(model, kind: type = nn.Linear):
    """(layer index, layer, our module name, module) of every projection that is a ``kind``: the float
    ones that may be quantized, or the quantized ones to finalize."""
    for i, layer in enumerate(model.layers):
        for ours in _CHECKPOINT_NAMES:
            try:
                module = layer.get_submodule(ours)
            except AttributeError:
                continue
            if isinstance(module, kind):
                yield i, layer, ours, module


def _moe_layers(model, kind: type = SparseMoe):
    """(layer index, layer) of every decoder layer whose MLP is a ``kind`` mixture of experts."""
    for i, layer in enumerate(model.layers):
        if type(layer.mlp) is kind:
            yield i, layer


def _experts_skipped(qc: QuantConfig, i: int) -> bool:
    names = (f"model.layers.{i}.mlp.experts.0.gate_proj", f"model.layers.{i}.block_sparse_moe.experts.0.w1")
    return any(qc.skips(n) for n in names)


def _set(layer: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, attr, module)


def quantize_model(model, spec, qc: QuantConfig | None) -> None:
    """Before loading a quantized checkpoint: its projection layers become quantized layers whose
    tensors carry the checkpoint's names. A float model (or FP8 at load) is left as it is.

    ``spec`` is the spec the model was built from: under tensor parallelism the rank's part, so the
    layers take the rank's sizes (its heads, columns and expert columns)."""
    if qc is None or not qc.from_checkpoint:
        return
    dtype = next(model.parameters()).dtype
    if spec.moe is not None and any(spec.moe.layers):
        if not qc.is_fp8:
            raise ModelLoadError(f"quantization_config.quant_method {qc.source!r}: 4-bit mixture-of-experts checkpoints "
                                 "are not supported yet (FP8 ones are)")
        for i, layer in list(_moe_layers(model)):
            if not _experts_skipped(qc, i):
                device = layer.mlp.gate.weight.device
                layer.mlp = Fp8SparseMoe(spec.hidden_size, spec.moe, layer.mlp.ops, qc, device, dtype)
    cls = Fp8Linear if qc.is_fp8 else IntLinear
    for i, layer, ours, linear in _projections(model):
        names = [f"model.layers.{i}.{n}" for n in _CHECKPOINT_NAMES[ours]]
        skipped = [qc.skips(n) for n in names]
        if all(skipped):
            continue
        if any(skipped):
            raise ModelLoadError(f"quantization_config: {names} are fused in one layer but only some are left unquantized")
        shards = _shards(spec, ours) or [linear.out_features]
        _set(layer, ours, cls(linear.in_features, linear.out_features, shards, linear.bias is not None, qc, dtype,
                              linear.weight.device))


_ROW_PARALLEL = ("self_attn.o_proj", "mlp.down_proj")  # under tensor parallelism: split by input rows


def finalize_quantized(model, spec, qc: QuantConfig | None, reduce_amax: AmaxReduce | None = None) -> None:
    """After loading: checkpoint layouts become the kernels' layout, or (FP8 at load) the loaded
    float projections are quantized. ``reduce_amax`` (tensor parallelism) takes a row-parallel
    rank's per-channel amax to the maximum over the ranks, so the ranks' scales are one GPU's."""
    if qc is None:
        return
    if not qc.from_checkpoint:
        for i, layer, ours, linear in list(_projections(model)):
            _set(layer, ours, Fp8Linear.from_float(linear, qc, reduce_amax if ours in _ROW_PARALLEL else None))
        for i, layer in list(_moe_layers(model)):
            layer.mlp = Fp8SparseMoe.from_float(layer.mlp, qc, reduce_amax)
        if model.layers[0].self_attn.qkv_proj.weight.is_cuda:
            torch.cuda.empty_cache()
        return
    for i, _, ours, module in _projections(model, QuantLinear):
        if isinstance(module, IntLinear):
            module.finalize(f"model.layers.{i}.{ours}")
        elif isinstance(module, Fp8Linear):
            module.finalize()


def fill_dummy_quantized(model, gen: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, (QuantLinear, Fp8SparseMoe)):
            module.fill_dummy(gen)


def weight_report(model, qc: QuantConfig | None) -> dict:
    """The weight format and bytes, for the start-up report and model metadata."""
    tensors = [t for n, t in list(model.named_parameters()) + list(model.named_buffers()) if "cos_sin_cache" not in n]
    total = sum(t.numel() * t.element_size() for t in tensors)
    quantized = sum(1 for m in model.modules() if isinstance(m, (QuantLinear, Fp8SparseMoe)))
    return {"format": qc.method if qc else "none", "source": qc.source if qc else "none",
            "weight_bytes": int(total), "quantized_layers": quantized}
