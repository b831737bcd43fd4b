"""The Llama family (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, Phi-3/4, and with sparse MoE MLPs
Mixtral and Qwen3-MoE) as one compact model.

Tokens of every request in a step are laid out flat: hidden states are [num_tokens, hidden],
never [batch, seq, hidden]; attention reads and writes the paged KV cache through the backend.
Parallelism, CUDA graphs and kernel choice are applied from outside through ``ops`` and the
attention backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from worker.attention.backend import AttentionBackend, AttentionMetadata
from worker.model import ops as torch_ops
from worker.model.moe import SparseMoe
from worker.model.quant.linear import Fp8Activation
from worker.model.spec import ModelSpec

if TYPE_CHECKING:  # the kernels import Triton: only where a backend fuses the norms
    from worker.kernels.rotary_cache import HeadNorms


@dataclass
class FoldedResidual:
    """What a decoder layer passes on as its residual when its down_proj already added the residual
    (the hidden state it returns is that sum) and wrote the sum's per-tile sums of squares: the next
    layer's qkv GEMV normalises its input from them, so its input RMSNorm needs no launch."""

    sums: torch.Tensor


def _takes_fp8_activation(projection: nn.Module):
    """The projection's ``takes_fp8_activation`` (W8A8 layers), or None. Looked up on the class: every
    layer of every step asks, and a miss on the instance goes through ``nn.Module.__getattr__``'s
    exception (a few µs each, on float models too)."""
    return _bound_method(projection, "takes_fp8_activation")


def _bound_method(module: nn.Module, name: str):
    """``module``'s method ``name`` looked up on its class (see ``_takes_fp8_activation``), or None."""
    method = getattr(type(module), name, None)
    return None if method is None else method.__get__(module)


class RMSNorm(nn.Module):
    adds_one = False  # the weight scales the normed row as it is (Gemma's norm scales by 1 + weight)

    def __init__(self, dim: int, eps: float, ops: ModuleType):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def feeds_fp8(self, projection: nn.Module, x: torch.Tensor) -> bool:
        """Whether this norm hands ``projection`` its input of x's rows already quantized to FP8
        (``forward_fp8``): a W8A8 layer that would quantize them per row itself (the norm and the
        quantization in one launch instead of two)."""
        takes = _takes_fp8_activation(projection)
        return takes is not None and x.dim() == 2 and self.weight.dtype == x.dtype and takes(x.shape[0], x)

    def forward_fp8(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[Fp8Activation, torch.Tensor]:
        """(the normed input as e4m3 codes with per-row scales, the residual sum)."""
        codes, scales, residual = self.ops.rms_norm_fp8(x, residual, self.weight, self.eps)
        return Fp8Activation(codes, scales, x.dtype), residual


class Attention(nn.Module):
    kv_group = 0  # set by the model runner when the model's layers form several KV groups

    def __init__(self, spec: ModelSpec, layer_idx: int, backend: AttentionBackend, ops: ModuleType):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(spec.hidden_size, self.q_size + 2 * self.kv_size, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, spec.hidden_size, bias=spec.o_bias)
        self.q_norm = self.head_norm(spec, ops) if spec.qk_norm else None
        self.k_norm = self.head_norm(spec, ops) if spec.qk_norm else None
        self.rotary_dim = spec.rotary_dim
        self.ops = ops
        scale = spec.attn_scale if spec.attn_scale is not None else self.head_dim**-0.5
        # soft-capping only where the family asks for it: not every backend takes the argument
        softcap = {} if spec.attn_logit_softcap is None else {"logit_softcap": float(spec.attn_logit_softcap)}
        self.attn = backend.make_impl(self.num_heads, self.num_kv_heads, self.head_dim, scale,
                                      spec.sliding_windows[layer_idx], **softcap)

    def head_norm(self, spec: ModelSpec, ops: ModuleType) -> nn.Module:
        """The per-head q/k norm of the family (Qwen3's and Gemma 3's differ in their weight's meaning)."""
        return RMSNorm(self.head_dim, spec.rms_norm_eps, ops)

    def _head_norms(self) -> HeadNorms:
        """The q/k norms as a backend's fused rotary cache write takes them."""
        from worker.kernels.rotary_cache import HeadNorms

        return HeadNorms(self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, self.q_norm.adds_one)

    def forward(self, positions, hidden, kv_cache, meta: AttentionMetadata, cos_sin_cache,
                project: bool = True, qkv: torch.Tensor | None = None) -> torch.Tensor:
        """The attention block's output, through o_proj unless ``project`` is False ([T, q_size] then);
        ``qkv`` given: the projection already made (from a folded norm), hidden unused but for its rows."""
        T = hidden.shape[0]
        if qkv is None:
            qkv = self.qkv_proj(hidden)  # [T, q + 2kv]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(T, self.num_heads, self.head_dim)
        k = k.reshape(T, self.num_kv_heads, self.head_dim)
        v = v.reshape(T, self.num_kv_heads, self.head_dim)
        meta = meta.for_group(self.kv_group)
        out = None
        if self.q_norm is not None:
            # a backend may take the q/k head norms into its rotary cache write (None: it cannot here)
            fused = getattr(self.attn, "forward_rotary_head_norms", None)
            if fused is not None:
                out = fused(positions, q, k, v, cos_sin_cache, self.rotary_dim, kv_cache, meta, self._head_norms())
            if out is None:
                q, k = self.q_norm(q), self.k_norm(k)
        if out is None:
            rotary_in_attention = getattr(self.attn, "forward_rotary", None)  # a backend may fuse it
            if rotary_in_attention is not None:
                out = rotary_in_attention(positions, q, k, v, cos_sin_cache, self.rotary_dim, kv_cache, meta)
            else:
                q, k = self.ops.rotary_embedding(positions, q, k, cos_sin_cache, self.rotary_dim)
                out = self.attn.forward(q, k, v, kv_cache, meta)  # [T, Hq, D]
        out = out.reshape(T, self.q_size)
        return self.o_proj(out) if project else out


class MLP(nn.Module):
    # decode-sized rows take gate_up's gated (SiLU) epilogue where the layer offers it
    # (forward_silu_and_mul), never its plain launch: what ``ward tune gemv`` times for this MLP
    gate_up_gated_epilogue = True

    def __init__(self, spec: ModelSpec, ops: ModuleType):
        super().__init__()
        self.gate_up_proj = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=spec.mlp_bias)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=spec.mlp_bias)
        self.ops = ops

    def forward(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        if isinstance(x, Fp8Activation):  # W8A8 gate_up: its output feeds down_proj quantized as well
            with_silu = _bound_method(self.gate_up_proj, "fp8_rows_with_silu")
            if with_silu is not None and with_silu(x):  # decode rows: the GEMV's SiLU epilogue, down widens
                return self.down_proj(self.gate_up_proj.forward_silu_and_mul(x))
            gate_up = self.gate_up_proj(x)
            takes = _takes_fp8_activation(self.down_proj)
            if takes is not None and takes(gate_up.shape[0], gate_up):
                return self.down_proj(Fp8Activation(*self.ops.silu_and_mul_fp8(gate_up), x.dtype))
            return self.down_proj(self.ops.silu_and_mul(gate_up))
        # a gate_up layer swapped in from outside may fuse the activation into its matmul
        fused = getattr(self.gate_up_proj, "forward_silu_and_mul", None)
        if fused is not None:
            return self.down_proj(fused(x))
        return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    # Set by worker.model.decode_linear.enable_norm_fusion: decode steps fold the post-attention norm
    # into o_proj (residual add, sums of squares) and gate_up (normalised input), and with fold_output
    # the next layer's input norm into this down_proj and that layer's qkv (FoldedResidual).
    norm_fusion = False
    fold_output = False
    # The projections whose norm hands a W8A8 layer its rows as e4m3 codes (RMSNorm.forward_fp8):
    # WARD_FP8_GEMV_W8A8=normed gives exactly these the e4m3-by-e4m3 decode GEMV
    fp8_normed_projections = ("qkv", "gate_up")

    def __init__(self, spec: ModelSpec, layer_idx: int, backend: AttentionBackend, ops: ModuleType):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, ops)
        self.self_attn = Attention(spec, layer_idx, backend, ops)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, ops)
        sparse = spec.moe is not None and spec.moe.layers[layer_idx]
        self.mlp = SparseMoe(spec.hidden_size, spec.moe, ops) if sparse else MLP(spec, ops)

    def forward(self, positions, hidden, residual, kv_cache, meta, cos_sin_cache):
        qkv = None
        if isinstance(residual, FoldedResidual):  # hidden is already the residual sum
            norm = self.input_layernorm
            qkv = self.self_attn.qkv_proj.forward_rms_norm(hidden, residual.sums, norm.weight, norm.eps)
            residual = hidden
        elif self.input_layernorm.feeds_fp8(self.self_attn.qkv_proj, hidden):
            quantized, residual = self.input_layernorm.forward_fp8(hidden, residual)
            qkv = self.self_attn.qkv_proj(quantized)
        elif residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        if self.norm_fusion and self.self_attn.o_proj.takes(hidden.shape[0], hidden):
            attended = self.self_attn(positions, hidden, kv_cache, meta, cos_sin_cache, project=False, qkv=qkv)
            residual, sums = self.self_attn.o_proj.forward_add_residual(attended, residual)
            norm = self.post_attention_layernorm
            activated = self.mlp.gate_up_proj.forward_rms_norm_silu_and_mul(residual, sums, norm.weight, norm.eps)
            if self.fold_output:
                hidden, sums = self.mlp.down_proj.forward_add_residual(activated, residual)
                return hidden, FoldedResidual(sums)
            return self.mlp.down_proj(activated), residual
        hidden = self.self_attn(positions, hidden, kv_cache, meta, cos_sin_cache, qkv=qkv)
        if isinstance(self.mlp, MLP) and self.post_attention_layernorm.feeds_fp8(self.mlp.gate_up_proj, hidden):
            quantized, residual = self.post_attention_layernorm.forward_fp8(hidden, residual)
            return self.mlp(quantized), residual
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, spec: ModelSpec, backend: AttentionBackend, ops: ModuleType = torch_ops, max_position: int = 4096):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, i, backend, ops) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, ops)
        self.lm_head = None if spec.tie_word_embeddings else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.max_position = max_position
        self.register_buffer("cos_sin_cache", torch.empty(max_position, spec.rotary_dim), persistent=False)

    def init_buffers(self) -> None:
        """Fills non-weight buffers (after the module was materialised on its device)."""
        cache = torch_ops.build_rope_cache(self.spec.ropes[0], self.max_position)
        self.cos_sin_cache = cache.to(self.cos_sin_cache.device)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer, kv in zip(self.layers, kv_caches):
            hidden, residual = layer(positions, hidden, residual, kv, meta, self.cos_sin_cache)
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, vocab]
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return torch.matmul(hidden, weight.t())
