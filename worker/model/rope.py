"""RoPE tables of a model, read from its Hugging Face config with transformers' own initialisers
(every variant they know: default, linear, llama3, yarn, longrope, ...), one table per layer type
where the config keys its RoPE parameters by layer type (Gemma 3: local and global)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.errors import ModelLoadError


@dataclass(frozen=True)
class Rope:
    """One RoPE table: inverse frequencies and cos/sin scaling, plus LongRoPE's long-context set."""

    inv_freq: torch.Tensor  # [rotary_dim // 2], float32
    scaling: float
    # LongRoPE (Phi-3): ``long_inv_freq`` for every position when the engine's context may pass the
    # original one, ``long_from`` (ops.build_rope_cache).
    long_inv_freq: torch.Tensor | None = None
    long_from: int | None = None


def _rope_params(config, layer_type: str | None) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    if layer_type is not None:
        return dict(params.get(layer_type) or {})
    if not params:  # transformers 4.x layout
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def _rope(config, head_dim: int, layer_type: str | None = None) -> tuple[Rope, int]:
    """One RoPE table from transformers' own initialisers (every variant they know); ``layer_type``
    picks a per-layer-type table (Gemma 3: local and global)."""
    params = _rope_params(config, layer_type)
    rope_type = params.get("rope_type", params.get("type", "default"))
    partial = float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0)
    rotary_dim = int(head_dim * partial)
    if rope_type in ("default", None):
        base = float(params.get("rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
        return Rope(inv_freq, 1.0), rotary_dim
    if rope_type == "dynamic":
        raise ModelLoadError("rope_parameters.rope_type: dynamic NTK RoPE scaling is not supported")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ModelLoadError(f"rope_parameters.rope_type: unsupported RoPE type {rope_type!r}")
    init = ROPE_INIT_FUNCTIONS[rope_type]
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    inv_freq, scaling = init(config, "cpu", **kwargs)
    if rope_type in ("longrope", "su"):
        original = int(params.get("original_max_position_embeddings")
                       or getattr(config, "original_max_position_embeddings", 0) or config.max_position_embeddings)
        long_inv, _ = init(config, "cpu", seq_len=original + 1, **kwargs)
        return Rope(inv_freq.float(), float(scaling), long_inv.float(), original), rotary_dim
    return Rope(inv_freq.float(), float(scaling)), rotary_dim


def build_ropes(config, head_dim: int, layer_types: list[str] | None) -> tuple[list[Rope], list[int], int]:
    """The distinct RoPE tables and each layer's index into them (one table unless the config keys
    its RoPE parameters by layer type, as Gemma 3 does: local base 10k, global 1M with its scaling)."""
    params = getattr(config, "rope_parameters", None) or {}
    if layer_types and all(t in params for t in set(layer_types)):
        kinds = list(dict.fromkeys(layer_types))
        built = [_rope(config, head_dim, kind) for kind in kinds]
        dims = {dim for _, dim in built}
        if len(dims) != 1:
            raise ModelLoadError("rope_parameters: partial_rotary_factor must be equal for every layer type")
        return [r for r, _ in built], [kinds.index(t) for t in layer_types], dims.pop()
    rope, dim = _rope(config, head_dim)
    return [rope], [0] * config.num_hidden_layers, dim
