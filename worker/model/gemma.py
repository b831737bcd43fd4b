"""Gemma 2 and Gemma 3 (text; also the language model of Gemma 3 multimodal checkpoints such as
MedGemma) as one compact model.

What differs from the Llama family: RMSNorm scales by (1 + weight), computed in float32 before the
cast; every layer has sandwich norms (after attention, before and after the MLP); the MLP is GeGLU
(tanh-approximated GELU); embeddings are scaled by sqrt(hidden) and tied to the output; attention
scales by ``query_pre_attn_scalar ** -0.5``; layers alternate sliding-window and global attention,
each type with its own RoPE table in Gemma 3 (local base 10k, global 1M with its scaling). Gemma 2
soft-caps attention scores and final logits (cap * tanh(x / cap)); Gemma 3 instead normalises q and k.
Tokens are flat, [num_tokens, hidden], as in ``llama.py``.
"""
from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from worker.attention.backend import AttentionBackend, AttentionMetadata
from worker.model import ops as torch_ops
from worker.model.llama import Attention
from worker.model.spec import ModelSpec


class GemmaRMSNorm(nn.Module):
    """x / rms(x) * (1 + weight), in float32 then cast, exactly as transformers computes it (one
    kernel with the Triton ops)."""

    adds_one = True  # the normed row is scaled by 1 + weight (as a fused head norm must know)

    def __init__(self, dim: int, eps: float, ops: ModuleType = torch_ops):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.gemma_rms_norm(x, self.weight, self.eps)

    def add_to(self, x: torch.Tensor, residual: torch.Tensor,
               next_norm: GemmaRMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """A sandwich norm: (``next_norm(residual + self(x))``, ``residual + self(x)``) in one launch."""
        return self.ops.gemma_add_rms_norm(x, residual, self.weight, self.eps, next_norm.weight)


class GemmaAttention(Attention):
    """Llama's attention with Gemma's (1 + weight) head norms and a RoPE table per layer kind (local or
    global); the query scalar and soft-capping come from the spec."""

    def __init__(self, spec: ModelSpec, layer_idx: int, backend: AttentionBackend, ops: ModuleType):
        super().__init__(spec, layer_idx, backend, ops)
        self.rope = spec.layer_rope(layer_idx)

    def head_norm(self, spec: ModelSpec, ops: ModuleType) -> nn.Module:
        return GemmaRMSNorm(self.head_dim, spec.rms_norm_eps, ops)

    def forward(self, positions, hidden, kv_cache, meta: AttentionMetadata, rope_caches) -> torch.Tensor:
        return super().forward(positions, hidden, kv_cache, meta, rope_caches[self.rope])


class GemmaMLP(nn.Module):
    # decode-sized rows take gate_up's gated (GeGLU) epilogue where the layer offers it
    # (forward_gelu_tanh_and_mul): no [T, 2I] product and no activation launch a decode step
    gate_up_gated_epilogue = True

    def __init__(self, spec: ModelSpec, ops: ModuleType):
        super().__init__()
        self.gate_up_proj = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = getattr(self.gate_up_proj, "forward_gelu_tanh_and_mul", None)
        if fused is not None and self.gate_up_proj.takes(x.numel() // x.shape[-1], x):
            return self.down_proj(fused(x))
        return self.down_proj(self.ops.gelu_tanh_and_mul(self.gate_up_proj(x)))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int, backend: AttentionBackend, ops: ModuleType):
        super().__init__()
        eps = spec.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(spec.hidden_size, eps, ops)
        self.self_attn = GemmaAttention(spec, layer_idx, backend, ops)
        self.post_attention_layernorm = GemmaRMSNorm(spec.hidden_size, eps, ops)
        self.pre_feedforward_layernorm = GemmaRMSNorm(spec.hidden_size, eps, ops)
        self.mlp = GemmaMLP(spec, ops)
        self.post_feedforward_layernorm = GemmaRMSNorm(spec.hidden_size, eps, ops)

    def forward(self, positions, normed, hidden, kv_cache, meta, rope_caches,
                next_norm: GemmaRMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """``normed``: ``input_layernorm(hidden)``, made by the layer before (or the model for the
        first). Returns (``next_norm`` of the layer's output, that output)."""
        attn = self.self_attn(positions, normed, kv_cache, meta, rope_caches)
        mlp_input, hidden = self.post_attention_layernorm.add_to(attn, hidden, self.pre_feedforward_layernorm)
        return self.post_feedforward_layernorm.add_to(self.mlp(mlp_input), hidden, next_norm)


class GemmaForCausalLM(nn.Module):
    def __init__(self, spec: ModelSpec, backend: AttentionBackend, ops: ModuleType = torch_ops, max_position: int = 4096):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(GemmaDecoderLayer(spec, i, backend, ops) for i in range(spec.num_layers))
        self.norm = GemmaRMSNorm(spec.hidden_size, spec.rms_norm_eps, ops)
        self.lm_head = None if spec.tie_word_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.max_position = max_position
        for i in range(len(spec.ropes)):
            self.register_buffer(f"rope_cache_{i}", torch.empty(max_position, spec.rotary_dim), persistent=False)

    def init_buffers(self) -> None:
        """Fills non-weight buffers (after the module was materialised on its device)."""
        for i, rope in enumerate(self.spec.ropes):
            old = getattr(self, f"rope_cache_{i}")
            setattr(self, f"rope_cache_{i}", torch_ops.build_rope_cache(rope, self.max_position).to(old.device))

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        hidden = self.embed_tokens(input_ids)
        # transformers rounds sqrt(hidden) to the weights' dtype before scaling
        hidden = hidden * torch.tensor(self.spec.hidden_size**0.5, dtype=hidden.dtype)
        rope_caches = [getattr(self, f"rope_cache_{i}") for i in range(len(self.spec.ropes))]
        normed = self.layers[0].input_layernorm(hidden)
        follows = [layer.input_layernorm for layer in self.layers[1:]] + [self.norm]
        for layer, kv, next_norm in zip(self.layers, kv_caches, follows):
            normed, hidden = layer(positions, normed, hidden, kv, meta, rope_caches, next_norm)
        return normed

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, vocab]
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = torch.matmul(hidden, weight.t())
        cap = self.spec.final_logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
