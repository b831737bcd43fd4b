"""Triton attention backend: the GPU path behind the ``AttentionBackend`` contract.

Per layer and step: one kernel writes the step's K/V into the paged cache, one launch of the
unified paged-attention kernel (plus a merge kernel when the context is split) computes every
request's output, whatever mix of prefill, chunked prefill and decode the step holds. Nothing here
synchronises with the device, so a whole step can be captured in a CUDA graph.

``forward_rotary`` also applies the model's (neox) rotary embedding, in the same launch as the cache
write (``WARD_ROPE_CACHE_FUSION=0``: rotary as its own kernel, for A/B timing).
"""
from __future__ import annotations

import os

import torch

from worker.attention.backend import AttentionMetadata
from worker.kernels.errors import KernelInputError


class TritonAttention:
    """One layer's attention with the Triton kernels.

    ``num_splits`` forces the split-KV partition count (1 disables it); None lets the kernel's
    heuristic choose per step from host-side sizes.
    """

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float, sliding_window: int | None,
        logit_softcap: float | None = None,
    ) -> None:
        if num_kv_heads < 1 or num_heads % num_kv_heads:
            raise KernelInputError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        if sliding_window is not None and sliding_window < 1:
            raise KernelInputError(f"sliding_window must be >= 1 or None, got {sliding_window}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale, self.sliding_window, self.logit_softcap = scale, sliding_window, logit_softcap
        self.num_splits: int | None = None
        # FP8 KV cache: float32 [1] or [num_kv_heads] scales (set by worker.model.quant.kv_cache)
        self.k_scale: torch.Tensor | None = None
        self.v_scale: torch.Tensor | None = None
        self.fuse_rotary = os.environ.get("WARD_ROPE_CACHE_FUSION", "1") != "0"
        # Qwen3's and Gemma 3's q/k head norms in the same launch (WARD_QK_NORM_FUSION=0: their own launches)
        self.fuse_head_norms = os.environ.get("WARD_QK_NORM_FUSION", "1") != "0"

    def decode_launch_key(self, num_reqs: int, max_seq_len: int, kv_element_size: int,
                          device: torch.device) -> tuple[int, int]:
        """What a decode step of ``num_reqs`` requests with contexts of at most ``max_seq_len`` tokens
        launches (split plan): equal keys, same kernels, so one captured decode graph serves both."""
        from worker.kernels.attention import decode_split_plan

        return decode_split_plan(num_reqs, self.num_heads, self.num_kv_heads, self.head_dim, kv_element_size,
                                 max_seq_len, device, self.num_splits)

    def forward(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Write K/V at ``meta.slot_mapping`` and return attention [T, num_heads, head_dim].

        Rows past ``meta.num_tokens`` (graph padding) come back as zeros, like the torch backend's.
        """
        from worker.kernels.kv_cache import reshape_and_cache

        key_cache, value_cache = kv_cache
        reshape_and_cache(k, v, key_cache, value_cache, meta.slot_mapping, self.k_scale, self.v_scale)
        return self._attend(q, kv_cache, meta)

    def forward_rotary(
        self,
        positions: torch.Tensor,  # [T]
        q: torch.Tensor,  # [T, num_heads, head_dim], rotated in place
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        cos_sin_cache: torch.Tensor,  # [max_position, rotary_dim]
        rotary_dim: int,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """``forward`` after a neox rotary embedding of q and k, which rides on the cache write."""
        if self.fuse_rotary:
            from worker.kernels.rotary_cache import rotary_and_cache

            key_cache, value_cache = kv_cache
            rotary_and_cache(positions, q, k, v, key_cache, value_cache, meta.slot_mapping, cos_sin_cache, rotary_dim,
                             k_scale=self.k_scale, v_scale=self.v_scale)
            return self._attend(q, kv_cache, meta)
        from worker.kernels.rotary import rotary_embedding

        q, k = rotary_embedding(positions, q, k, cos_sin_cache, rotary_dim=rotary_dim, is_neox=True)
        return self.forward(q, k, v, kv_cache, meta)

    def forward_rotary_head_norms(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos_sin_cache: torch.Tensor,
        rotary_dim: int,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        head_norms,  # worker.kernels.rotary_cache.HeadNorms
    ) -> torch.Tensor | None:
        """``forward_rotary`` after per-head norms of q and k (q normed and rotated in place), all in the
        cache write's launch; None where that launch cannot take them (a partial rotary, the fusion
        switched off): the caller then norms q and k itself."""
        if not (self.fuse_rotary and self.fuse_head_norms and rotary_dim == q.shape[-1]):
            return None
        from worker.kernels.rotary_cache import rotary_and_cache

        key_cache, value_cache = kv_cache
        rotary_and_cache(positions, q, k, v, key_cache, value_cache, meta.slot_mapping, cos_sin_cache, rotary_dim,
                         head_norms, self.k_scale, self.v_scale)
        return self._attend(q, kv_cache, meta)

    def _attend(self, q: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor],
                meta: AttentionMetadata) -> torch.Tensor:
        from worker.kernels.attention import unified_attention

        key_cache, value_cache = kv_cache
        out = torch.empty_like(q)
        if q.shape[0] > meta.num_tokens:
            out[meta.num_tokens :].zero_()
        unified_attention(
            q,
            key_cache,
            value_cache,
            out,
            meta.query_start_loc,
            meta.seq_lens,
            meta.block_tables,
            max_query_len=meta.max_query_len,
            max_seq_len=meta.max_seq_len,
            scale=self.scale,
            sliding_window=self.sliding_window,
            num_reqs=meta.num_reqs,
            num_splits=self.num_splits,
            request_order=meta.request_order,
            logit_softcap=self.logit_softcap,
            k_scale=self.k_scale,
            v_scale=self.v_scale,
        )
        return out


class TritonBackend:
    """Factory of ``TritonAttention`` layers (``get_backend("triton", ...)``)."""

    name = "triton"

    def make_impl(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        sliding_window: int | None = None,
        logit_softcap: float | None = None,
    ) -> TritonAttention:
        return TritonAttention(num_heads, num_kv_heads, head_dim, scale, sliding_window, logit_softcap)
