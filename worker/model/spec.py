"""What the engine needs to know about a model, read from its Hugging Face config."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from worker.errors import ModelLoadError
from worker.model.rope import Rope, build_ropes

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",  # its text part (MedGemma); the vision tower is not loaded
    "Phi3ForCausalLM": "phi3",
    "MixtralForCausalLM": "mixtral",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
MODEL_TYPES = {
    "llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
    "gemma3_text": "gemma3", "gemma3": "gemma3", "phi3": "phi3", "mixtral": "mixtral", "qwen3_moe": "qwen3_moe",
}
GEMMA_FAMILIES = ("gemma2", "gemma3")
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")


@dataclass
class MoeSpec:
    """A sparse mixture-of-experts MLP: a softmax router picks ``top_k`` of ``num_experts``."""

    num_experts: int
    top_k: int
    intermediate_size: int  # of one expert
    renormalize: bool  # top-k weights divided by their sum (Mixtral always; Qwen3-MoE by norm_topk_prob)
    layers: list[bool]  # per layer: sparse MoE (True) or the dense MLP


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
    # Gemma 2/3: (1 + w) norms, sandwich norms, GeGLU, scaled embeddings, soft-capping, a RoPE table
    # per layer type. Defaults are the Llama family's.
    hidden_act: str = "silu"
    attn_scale: float | None = None  # None: head_dim ** -0.5
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    ropes: list[Rope] = field(default_factory=list)  # distinct tables; ropes[0] is inv_freq's
    rope_index: list[int] = field(default_factory=list)  # per layer, into ropes
    moe: MoeSpec | None = None

    @property
    def is_gemma(self) -> bool:
        return self.family in GEMMA_FAMILIES

    def layer_rope(self, layer_idx: int) -> int:
        return self.rope_index[layer_idx] if self.rope_index else 0

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V per token across all layers, at 2 bytes per element (bf16/fp16)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2


def _eos_ids(model_dir: str, *configs) -> list[int]:
    """End tokens from generation_config.json, then from each config given (a multimodal checkpoint
    names Gemma's <end_of_turn> at its top level, not in its text part)."""
    values = []
    path = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(path):
        with open(path) as f:
            values.append(json.load(f).get("eos_token_id"))
    values += [getattr(c, "eos_token_id", None) for c in configs]
    ids: list[int] = []
    for value in values:
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
        family = MODEL_TYPES.get(config.model_type)
    if family is None:
        raise ModelLoadError(
            f"{model_dir}: architectures {archs or config.model_type} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    top = config
    config = getattr(config, "text_config", None) or config  # Gemma3ForConditionalGeneration: its text part
    _refuse_unsupported(family, config)
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if family in ("mistral", "mixtral", "phi3"):
        windows = [window] * config.num_hidden_layers
    elif layer_types:
        windows = [window if t == "sliding_attention" else None for t in layer_types]
    else:
        windows = [None] * config.num_hidden_layers
    ropes, rope_index, rotary_dim = build_ropes(config, head_dim, layer_types)
    dtype = getattr(top, "dtype", None) or getattr(top, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    attention_bias = bool(getattr(config, "attention_bias", False))
    gemma = family in GEMMA_FAMILIES
    act_field = "hidden_activation" if getattr(config, "hidden_activation", None) else "hidden_act"
    hidden_act = getattr(config, act_field, None) or "silu"
    # each family's MLP has one activation (SiLU, or Gemma's tanh GELU); any other is refused, not ignored
    if hidden_act not in (_GELU_TANH if gemma else ("silu",)):
        raise ModelLoadError(f"{model_dir}: {act_field} {hidden_act!r} is not supported for {family} "
                             f"({'gelu_pytorch_tanh' if gemma else 'silu'})")
    scalar = getattr(config, "query_pre_attn_scalar", None) if gemma else None
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
        tie_word_embeddings=bool(getattr(top, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False))),
        qkv_bias=True if family == "qwen2" else attention_bias,
        o_bias=False if family == "qwen2" else attention_bias,
        mlp_bias=bool(getattr(config, "mlp_bias", False)),
        qk_norm=family in ("qwen3", "qwen3_moe", "gemma3"),
        sliding_windows=windows,
        inv_freq=ropes[0].inv_freq,
        rope_attention_scaling=ropes[0].scaling,
        rotary_dim=rotary_dim,
        config_dtype=dtype if isinstance(dtype, torch.dtype) else None,
        eos_token_ids=_eos_ids(model_dir, top, config),
        bos_token_id=getattr(config, "bos_token_id", None) if getattr(config, "bos_token_id", None) is not None
        else getattr(top, "bos_token_id", None),
        hf_config=top,
        hidden_act="gelu_tanh" if hidden_act in _GELU_TANH else "silu",
        attn_scale=float(scalar) ** -0.5 if scalar else None,
        attn_logit_softcap=getattr(config, "attn_logit_softcapping", None) if gemma else None,
        final_logit_softcap=getattr(config, "final_logit_softcapping", None) if gemma else None,
        ropes=ropes,
        rope_index=rope_index,
        moe=_moe(family, config),
    )


def _moe(family: str, config) -> MoeSpec | None:
    if family == "mixtral":
        n = config.num_local_experts
        return MoeSpec(n, config.num_experts_per_tok, config.intermediate_size, True, [True] * config.num_hidden_layers)
    if family == "qwen3_moe":
        n = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", 0)
        skip = set(getattr(config, "mlp_only_layers", None) or [])
        step = int(getattr(config, "decoder_sparse_step", 1) or 1)
        layers = [i not in skip and n > 0 and (i + 1) % step == 0 for i in range(config.num_hidden_layers)]
        return MoeSpec(n, config.num_experts_per_tok, config.moe_intermediate_size, bool(config.norm_topk_prob), layers)
    return None


def _refuse_unsupported(family: str, config) -> None:
    """Options the engine does not implement are refused at load, naming the field."""
    if getattr(config, "use_bidirectional_attention", False):
        raise ModelLoadError("use_bidirectional_attention: bidirectional attention (embedding Gemma) is not supported")
    if family == "qwen3_moe" and getattr(config, "use_sliding_window", False):
        raise ModelLoadError("use_sliding_window: sliding-window attention for Qwen3-MoE is not supported")
