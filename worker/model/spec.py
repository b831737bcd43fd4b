"""What the engine needs to know about a model, read from its Hugging Face config."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from worker.errors import ModelLoadError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}


@dataclass
class ModelSpec:
    family: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_windows: list[int | None]  # per layer
    inv_freq: torch.Tensor  # [rotary_dim // 2], float32
    rope_attention_scaling: float
    rotary_dim: int
    config_dtype: torch.dtype | None
    eos_token_ids: list[int]
    bos_token_id: int | None
    hf_config: object

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V per token across all layers, at 2 bytes per element (bf16/fp16)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2


def _rope(config, head_dim: int) -> tuple[torch.Tensor, float, int]:
    """inv_freq and attention scaling from transformers' own RoPE initialisers (every variant they know)."""
    params = getattr(config, "rope_parameters", None) or {}
    if not params:  # transformers 4.x layout
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    partial = float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0)
    rotary_dim = int(head_dim * partial)
    if rope_type in ("default", None):
        base = float(params.get("rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
        return inv_freq, 1.0, rotary_dim
    if rope_type == "dynamic":
        raise ModelLoadError("dynamic NTK RoPE scaling is not supported")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ModelLoadError(f"unsupported RoPE type {rope_type!r}")
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    return inv_freq.float(), float(scaling), rotary_dim


def _eos_ids(model_dir: str, config) -> list[int]:
    ids: list[int] = []
    for source in (os.path.join(model_dir, "generation_config.json"), None):
        value = None
        if source and os.path.exists(source):
            with open(source) as f:
                value = json.load(f).get("eos_token_id")
        elif source is None:
            value = getattr(config, "eos_token_id", None)
        if value is None:
            continue
        for v in value if isinstance(value, list) else [value]:
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return ids


def load_spec(model_dir: str) -> ModelSpec:
    """Parses config.json (through transformers, so every config layout it knows is accepted)."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ModelLoadError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:  # transformers raises many types here
        raise ModelLoadError(f"{model_dir}: cannot read config.json: {exc}") from exc
    archs = getattr(config, "architectures", None) or []
    family = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if family is None:
        family = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}.get(config.model_type)
    if family is None:
        raise ModelLoadError(
            f"{model_dir}: architecture {archs or config.model_type} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if family == "mistral":
        windows = [window] * config.num_hidden_layers
    elif layer_types:
        windows = [window if t == "sliding_attention" else None for t in layer_types]
    else:
        windows = [None] * config.num_hidden_layers
    inv_freq, scaling, rotary_dim = _rope(config, head_dim)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    attention_bias = bool(getattr(config, "attention_bias", False))
    return ModelSpec(
        family=family,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        vocab_size=config.vocab_size,
        rms_norm_eps=float(config.rms_norm_eps),
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 4096)),
        tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=True if family == "qwen2" else attention_bias,
        o_bias=False if family == "qwen2" else attention_bias,
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        qk_norm=family == "qwen3",
        sliding_windows=windows,
        inv_freq=inv_freq,
        rope_attention_scaling=scaling,
        rotary_dim=rotary_dim,
        config_dtype=dtype if isinstance(dtype, torch.dtype) else None,
        eos_token_ids=_eos_ids(model_dir, config),
        bos_token_id=getattr(config, "bos_token_id", None),
        hf_config=config,
    )
