"""flash-attn as an optional attention backend (used when the package is importable).

flash-attn 2 reads a paged cache through ``block_table`` only when a page holds a multiple of 256
tokens, so this backend serves engines configured with such a block size; the Triton backend serves
every other configuration. K/V are written with Ward's own cache kernel; the causal mask is aligned
to the end of each sequence (flash-attn >= 2.1), which is the context-offset causality of the
attention contract, so one call covers prefill, chunked prefill and decode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.attention.backend import AttentionMetadata

PAGE_MULTIPLE = 256


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


class FlashAttnAttention:
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float, sliding_window: int | None):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        # flash-attn's window (left, right) counts keys before the query: left = window - 1
        self.window = (sliding_window - 1, 0) if sliding_window else (-1, -1)

    def forward(self, q, k, v, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        from flash_attn import flash_attn_varlen_func

        from worker.kernels.kv_cache import reshape_and_cache

        key_cache, value_cache = kv_cache
        if key_cache.shape[1] % PAGE_MULTIPLE:
            raise ValueError(f"flash-attn needs a block size that is a multiple of {PAGE_MULTIPLE}")
        reshape_and_cache(k, v, key_cache, value_cache, meta.slot_mapping)
        T = meta.num_tokens
        cu_seqlens_k = F.pad(torch.cumsum(meta.seq_lens, 0, dtype=torch.int32), (1, 0))
        out = torch.empty_like(q)
        if q.shape[0] > T:
            out[T:].zero_()  # graph padding rows only: zeroing a whole prefill step is memory traffic for nothing
        out[:T] = flash_attn_varlen_func(
            q[:T], key_cache, value_cache,
            cu_seqlens_q=meta.query_start_loc, cu_seqlens_k=cu_seqlens_k,
            max_seqlen_q=meta.max_query_len, max_seqlen_k=meta.max_seq_len,
            softmax_scale=self.scale, causal=True, window_size=self.window, block_table=meta.block_tables,
        )
        return out


class FlashAttnBackend:
    name = "flash_attn"

    def make_impl(self, num_heads, num_kv_heads, head_dim, scale, sliding_window=None) -> FlashAttnAttention:
        return FlashAttnAttention(num_heads, num_kv_heads, head_dim, scale, sliding_window)
