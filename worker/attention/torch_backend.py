"""Reference attention in plain torch: the CPU path and the oracle for the GPU kernels.

It gathers each request's K/V from its block table and runs exact causal attention with the
context offset. Requests are grouped by shape so a batch of decodes is one batched matmul.
"""
from __future__ import annotations

import torch

from worker.attention.backend import AttentionMetadata


FP8_MAX = 448.0  # largest finite float8_e4m3fn


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[T, Hkv, D] -> e4m3 with a per-tensor ([1]) or per-head ([Hkv]) scale: x ~= q * scale."""
    return (x.float() / scale.view(1, -1, 1)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def from_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3 [..., Hkv, D] -> float32, scaled back."""
    return x.float() * scale.view(-1, 1)


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, kv_cache: tuple[torch.Tensor, torch.Tensor], slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None,
) -> None:
    """Scatter this step's K/V rows into the paged cache; padding slots (< 0) are skipped. An FP8
    cache stores ``k / k_scale`` and ``v / v_scale`` in e4m3."""
    key_cache, value_cache = kv_cache
    if key_cache.dtype == torch.float8_e4m3fn:  # copied as bytes (index_copy_ has no e4m3 kernel on every device)
        k, v = to_fp8(k, k_scale).view(torch.uint8), to_fp8(v, v_scale).view(torch.uint8)
        key_cache, value_cache = key_cache.view(torch.uint8), value_cache.view(torch.uint8)
    num_blocks, block_size, num_kv_heads, head_dim = key_cache.shape
    slots = slot_mapping[: k.shape[0]]
    valid = slots >= 0
    if not bool(valid.all()):
        slots, k, v = slots[valid], k[valid], v[valid]
    key_cache.view(num_blocks * block_size, num_kv_heads, head_dim).index_copy_(0, slots, k.to(key_cache.dtype))
    value_cache.view(num_blocks * block_size, num_kv_heads, head_dim).index_copy_(0, slots, v.to(value_cache.dtype))


def gather_kv(
    kv_cache: tuple[torch.Tensor, torch.Tensor], block_table: torch.Tensor, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One request's first ``seq_len`` cached K and V rows, each [seq_len, num_kv_heads, head_dim]."""
    key_cache, value_cache = kv_cache
    block_size = key_cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    ids = block_table[:num_blocks].long()
    k = key_cache[ids].flatten(0, 1)[:seq_len]
    v = value_cache[ids].flatten(0, 1)[:seq_len]
    return k, v


def reference_attention(
    q: torch.Tensor,  # [q_len, Hq, D]
    k: torch.Tensor,  # [seq_len, Hkv, D]
    v: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Exact causal attention of q_len queries that are the last q_len positions of seq_len;
    with ``logit_softcap`` (Gemma 2) scores become cap * tanh(scores / cap) before the mask."""
    q_len, num_heads, _ = q.shape
    seq_len, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    qf = q.float().transpose(0, 1)  # [Hq, q_len, D]
    kf = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, seq_len, D]
    vf = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * scale  # [Hq, q_len, seq_len]
    if logit_softcap is not None:
        scores = torch.tanh(scores / logit_softcap) * logit_softcap
    q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
    k_pos = torch.arange(seq_len, device=q.device)[None, :]
    mask = k_pos > q_pos
    if sliding_window is not None:
        mask |= k_pos <= q_pos - sliding_window
    scores.masked_fill_(mask, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), vf)  # [Hq, q_len, D]
    return out.transpose(0, 1).to(q.dtype)


class TorchAttention:
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float, sliding_window: int | None,
                 logit_softcap: float | None = None):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale, self.sliding_window, self.logit_softcap = scale, sliding_window, logit_softcap
        # FP8 KV cache: float32 [1] or [num_kv_heads] scales (set by worker.model.quant.kv_cache)
        self.k_scale: torch.Tensor | None = None
        self.v_scale: torch.Tensor | None = None

    def forward(self, q, k, v, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        write_kv_cache(k, v, kv_cache, meta.slot_mapping, self.k_scale, self.v_scale)
        fp8 = kv_cache[0].dtype == torch.float8_e4m3fn
        out = torch.zeros_like(q)
        starts = meta.query_start_loc_cpu or meta.query_start_loc.tolist()
        seq_lens = meta.seq_lens_cpu or meta.seq_lens.tolist()
        if meta.is_pure_decode and self.sliding_window is None:
            out[: meta.num_reqs] = self._batched_decode(q[: meta.num_reqs], kv_cache, meta, seq_lens)
            return out
        for i in range(meta.num_reqs):
            s, e = starts[i], starts[i + 1]
            k_ctx, v_ctx = gather_kv(kv_cache, meta.block_tables[i], seq_lens[i])
            if fp8:
                k_ctx, v_ctx = from_fp8(k_ctx, self.k_scale), from_fp8(v_ctx, self.v_scale)
            if self.sliding_window is not None:
                # Keys before the first query's window are never read (their blocks may have been
                # given back and reused); the masks are shift-invariant, so drop them.
                first = max(0, seq_lens[i] - (e - s) - self.sliding_window + 1)
                k_ctx, v_ctx = k_ctx[first:], v_ctx[first:]
            out[s:e] = reference_attention(q[s:e], k_ctx, v_ctx, self.scale, self.sliding_window, self.logit_softcap)
        return out

    def _batched_decode(self, q, kv_cache, meta: AttentionMetadata, seq_lens: list[int]) -> torch.Tensor:
        # One query per request: pad every context to the longest and mask the tail.
        key_cache, value_cache = kv_cache
        block_size = key_cache.shape[1]
        max_len = max(seq_lens)
        nb = (max_len + block_size - 1) // block_size
        ids = meta.block_tables[: meta.num_reqs, :nb].long()
        group = self.num_heads // self.num_kv_heads
        k = key_cache[ids].flatten(1, 2)[:, :max_len]  # [B, L, Hkv, D]
        v = value_cache[ids].flatten(1, 2)[:, :max_len]
        if key_cache.dtype == torch.float8_e4m3fn:
            k, v = from_fp8(k, self.k_scale), from_fp8(v, self.v_scale)
        B = q.shape[0]
        qf = q.view(B, self.num_kv_heads, group, self.head_dim).float()
        scores = torch.einsum("bhgd,blhd->bhgl", qf, k.float()) * self.scale
        if self.logit_softcap is not None:
            scores = torch.tanh(scores / self.logit_softcap) * self.logit_softcap
        lens = torch.tensor(seq_lens, device=q.device)
        mask = torch.arange(max_len, device=q.device)[None, :] >= lens[:, None]  # [B, L]
        scores.masked_fill_(mask[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # padding rows (length 0) attend to nothing
        out = torch.einsum("bhgl,blhd->bhgd", probs, v.float())
        return out.reshape(B, self.num_heads, self.head_dim).to(q.dtype)


class TorchBackend:
    name = "torch"

    def make_impl(self, num_heads, num_kv_heads, head_dim, scale, sliding_window=None, logit_softcap=None) -> TorchAttention:
        return TorchAttention(num_heads, num_kv_heads, head_dim, scale, sliding_window, logit_softcap)
