"""Checks of the Triton kernels against the torch references, shared by the CPU and GPU tests.

Each ``check_*`` builds fresh random inputs (never zeros), fills every output with NaN before the
launch, runs the kernel, and returns plain metrics: ``rel_err`` = ||out - ref|| / ||ref|| over the rows
that must be written, ``unwritten`` = NaNs left in those rows, plus case-specific counts. The test
module asserts on them. On the CPU the checks run inside Triton's interpreter (a subprocess started by
the test module, see ``kernels_interpreter.py``); on CUDA they run the compiled kernels.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from worker.attention.backend import AttentionMetadata
from worker.attention.torch_backend import reference_attention, write_kv_cache

Metrics = dict[str, float]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (NaN if out holds NaN)."""
    out64, ref64 = out.double().cpu(), ref.double().cpu()
    return float((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300))


def nan_count(t: torch.Tensor) -> float:
    return float(torch.isnan(t.float()).sum())


def _randn(generator: torch.Generator, *shape: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    # Drawn on the CPU so a case sees the same numbers on every device.
    return torch.randn(*shape, generator=generator).to(dtype=dtype, device=device)


# ---------------------------------------------------------------- paged attention


@dataclass(frozen=True)
class AttentionCase:
    """One step's batch: request i has ``context_lens[i]`` cached tokens and ``query_lens[i]`` new ones."""

    query_lens: tuple[int, ...]
    context_lens: tuple[int, ...]
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 64
    block_size: int = 16
    sliding_window: int | None = None
    num_splits: int | None = None  # None lets the heuristic choose
    split_tokens: int | None = None  # pieces of this many context tokens instead of num_splits
    longest_first: bool = False  # programs take the requests in order of falling length
    padding_reqs: int = 0  # trailing requests with one query row and seq_len 0 (CUDA-graph padding)
    padding_rows: int = 0  # rows after the last request, owned by no request
    through_backend: bool = False  # run TritonBackend.forward (cache write + attention) instead of the kernel
    seed: int = 0
    logit_softcap: float | None = None  # Gemma 2's attention soft-capping

    @property
    def seq_lens(self) -> tuple[int, ...]:
        return tuple(c + q for c, q in zip(self.context_lens, self.query_lens, strict=True))


@dataclass
class _PagedBatch:
    q: torch.Tensor
    k_new: torch.Tensor  # this step's K rows for every q row (padding rows included)
    v_new: torch.Tensor
    key_cache: torch.Tensor
    value_cache: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    contexts: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # full K, V per real request


def _build_paged_batch(case: AttentionCase, device: str, dtype: torch.dtype, write_step_kv: bool) -> _PagedBatch:
    g = torch.Generator().manual_seed(case.seed)
    bs, hkv, d = case.block_size, case.num_kv_heads, case.head_dim
    seq_lens = list(case.seq_lens) + [0] * case.padding_reqs
    query_lens = list(case.query_lens) + [1] * case.padding_reqs
    blocks_needed = [math.ceil(s / bs) for s in seq_lens]
    # Shuffled physical blocks, plus one spare "poison" block that every unused table entry points at.
    num_blocks = sum(blocks_needed) + 3
    perm = torch.randperm(num_blocks, generator=g)
    poison_block = int(perm[-1])
    width = max(blocks_needed) + 2
    block_tables = torch.full((len(seq_lens), width), poison_block, dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_needed):
        block_tables[i, :n] = perm[used : used + n].to(torch.int32)
        used += n

    # Everything the kernel must never read stays NaN, so a stray read shows up in the output.
    key_cache = torch.full((num_blocks, bs, hkv, d), float("nan"), dtype=dtype)
    value_cache = torch.full_like(key_cache, float("nan"))
    num_rows = sum(query_lens) + case.padding_rows
    k_new = _randn(g, num_rows, hkv, d, dtype=dtype, device="cpu")
    v_new = _randn(g, num_rows, hkv, d, dtype=dtype, device="cpu")
    slot_mapping = torch.full((num_rows,), -1, dtype=torch.int64)
    contexts = []
    row = 0
    for i, (ctx, q_len) in enumerate(zip(case.context_lens, case.query_lens, strict=True)):
        seq = ctx + q_len
        k = _randn(g, seq, hkv, d, dtype=dtype, device="cpu")
        v = _randn(g, seq, hkv, d, dtype=dtype, device="cpu")
        k[ctx:], v[ctx:] = k_new[row : row + q_len], v_new[row : row + q_len]
        positions = torch.arange(seq)
        slots = block_tables[i, positions // bs].long() * bs + positions % bs
        written = seq if write_step_kv else ctx
        key_cache.view(-1, hkv, d)[slots[:written]] = k[:written]
        value_cache.view(-1, hkv, d)[slots[:written]] = v[:written]
        slot_mapping[row : row + q_len] = slots[ctx:]
        contexts.append((k, v))
        row += q_len

    q = _randn(g, num_rows, case.num_heads, d, dtype=dtype, device="cpu")
    query_start_loc = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int32)
    return _PagedBatch(
        q=q.to(device),
        k_new=k_new.to(device),
        v_new=v_new.to(device),
        key_cache=key_cache.to(device),
        value_cache=value_cache.to(device),
        query_start_loc=query_start_loc.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        slot_mapping=slot_mapping.to(device),
        contexts=contexts,
    )


def check_attention(case: AttentionCase, device: str, dtype: torch.dtype) -> Metrics:
    """Paged attention (kernel alone, or the whole TritonBackend step) against ``reference_attention``.

    Metrics: rel_err and unwritten over the real requests' rows; ``padding_req_nonzero`` = entries of
    padding-request rows that are not exactly 0; ``padding_rows_wrong`` = entries of rows owned by no
    request that differ from what the path promises (untouched NaN for the kernel, zeros for the
    backend); ``cache_mismatch`` = cache entries that differ from the torch cache write (backend only).
    """
    batch = _build_paged_batch(case, device, dtype, write_step_kv=not case.through_backend)
    scale = case.head_dim**-0.5
    out = torch.full_like(batch.q, float("nan"))
    num_reqs = len(case.query_lens) + case.padding_reqs
    real_rows = sum(case.query_lens)
    expected_cache = None
    if case.through_backend:
        from worker.attention.triton_backend import TritonBackend

        expected_cache = (batch.key_cache.clone(), batch.value_cache.clone())
        write_kv_cache(batch.k_new, batch.v_new, expected_cache, batch.slot_mapping)
        meta = AttentionMetadata(
            num_tokens=real_rows,
            num_reqs=num_reqs,
            query_start_loc=batch.query_start_loc,
            seq_lens=batch.seq_lens,
            block_tables=batch.block_tables,
            slot_mapping=batch.slot_mapping,
            max_query_len=max(case.query_lens),
            max_seq_len=max(case.seq_lens),
        )
        impl = TritonBackend().make_impl(case.num_heads, case.num_kv_heads, case.head_dim, scale, case.sliding_window,
                                         logit_softcap=case.logit_softcap)
        impl.num_splits = case.num_splits
        out = impl.forward(batch.q, batch.k_new, batch.v_new, (batch.key_cache, batch.value_cache), meta)
    else:
        from worker.kernels import unified_attention

        unified_attention(
            batch.q,
            batch.key_cache,
            batch.value_cache,
            out,
            batch.query_start_loc,
            batch.seq_lens,
            batch.block_tables,
            max_query_len=max(case.query_lens),
            max_seq_len=max(case.seq_lens),
            scale=scale,
            sliding_window=case.sliding_window,
            num_splits=case.num_splits,
            split_tokens=case.split_tokens,
            request_order=(torch.argsort(batch.seq_lens, descending=True, stable=True).to(torch.int32)
                           if case.longest_first else None),
            logit_softcap=case.logit_softcap,
        )

    refs = []
    start = 0
    for (k, v), q_len in zip(batch.contexts, case.query_lens, strict=True):
        q = batch.q[start : start + q_len].float().cpu()
        refs.append(reference_attention(q, k.float(), v.float(), scale, case.sliding_window, case.logit_softcap))
        start += q_len
    ref = torch.cat(refs)
    out_cpu = out.float().cpu()
    real = out_cpu[:real_rows]
    padding_req_rows = out_cpu[real_rows : real_rows + case.padding_reqs]
    orphan_rows = out_cpu[real_rows + case.padding_reqs :]
    if case.through_backend:
        orphan_wrong = float((orphan_rows != 0).sum())
    else:
        orphan_wrong = float((~torch.isnan(orphan_rows)).sum())
    metrics: Metrics = {
        "rel_err": rel_err(real, ref),
        "unwritten": nan_count(real) + nan_count(padding_req_rows),
        "padding_req_nonzero": float((padding_req_rows != 0).sum()),
        "padding_rows_wrong": orphan_wrong,
    }
    if expected_cache is not None:
        metrics["cache_mismatch"] = _cache_mismatch((batch.key_cache, batch.value_cache), expected_cache)
    return metrics


def _cache_mismatch(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Entries (NaN-aware) where two caches differ."""
    wrong = 0.0
    for a, b in zip(got, want, strict=True):
        a, b = a.float().cpu(), b.float().cpu()
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        wrong += float((~same).sum())
    return wrong


# ---------------------------------------------------------------- KV cache write


def check_reshape_and_cache(
    num_tokens: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    num_padding: int,
    device: str,
    dtype: torch.dtype,
    strided_input: bool = False,
    seed: int = 0,
) -> Metrics:
    """``reshape_and_cache`` against ``write_kv_cache`` on a NaN-filled cache with shuffled slots.

    ``num_padding`` of the tokens get slot -1 and must write nothing; with ``strided_input`` K and V are
    views into one fused [T, 2 * Hkv * D] tensor (row stride != Hkv * D). Metrics: ``mismatch`` =
    cache entries differing from the reference write; ``written`` = entries that changed.
    """
    from worker.kernels import reshape_and_cache

    g = torch.Generator().manual_seed(seed)
    num_blocks = math.ceil(num_tokens / block_size) + 2
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(cache_shape, float("nan"), dtype=dtype, device=device)
    value_cache = torch.full_like(key_cache, float("nan"))
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=g)[:num_padding]] = -1
    if strided_input:
        fused = _randn(g, num_tokens, 2 * num_kv_heads * head_dim, dtype=dtype, device=device)
        key = fused[:, : num_kv_heads * head_dim].view(num_tokens, num_kv_heads, head_dim)
        value = fused[:, num_kv_heads * head_dim :].view(num_tokens, num_kv_heads, head_dim)
    else:
        key = _randn(g, num_tokens, num_kv_heads, head_dim, dtype=dtype, device=device)
        value = _randn(g, num_tokens, num_kv_heads, head_dim, dtype=dtype, device=device)
    # Extra trailing slots, as with a slot_mapping sized for CUDA-graph padding; they must be ignored.
    slot_mapping = torch.cat([slots, torch.zeros(3, dtype=torch.int64)]).to(device)
    expected = (key_cache.clone(), value_cache.clone())
    write_kv_cache(key, value, expected, slot_mapping[:num_tokens])
    reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
    written = float((~torch.isnan(key_cache.float())).sum() + (~torch.isnan(value_cache.float())).sum())
    return {
        "mismatch": _cache_mismatch((key_cache, value_cache), expected),
        "written": written,
        "expected_written": float(2 * (num_tokens - num_padding) * num_kv_heads * head_dim),
    }


# ---------------------------------------------------------------- norms, rotary, activation


def hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face Llama's RMSNorm, verbatim in behaviour: fp32 statistics, cast, then weight."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def check_rms_norm(shape: tuple[int, ...], device: str, dtype: torch.dtype, seed: int = 0) -> Metrics:
    """``rms_norm``, ``fused_add_rms_norm`` and ``fused_add_rms_norm_`` against the Hugging Face formula.

    Metrics: rel_err of the plain norm, of the fused norm and of the in-place norm; ``residual_mismatch``
    = entries where the fused residual output differs from ``x + residual`` (exact match expected);
    ``unwritten`` = NaNs left in any output.
    """
    from worker.kernels import fused_add_rms_norm, fused_add_rms_norm_, rms_norm

    g = torch.Generator().manual_seed(seed)
    eps = 1e-5
    hidden = shape[-1]
    x = _randn(g, *shape, dtype=dtype, device=device) * 3.0
    residual = _randn(g, *shape, dtype=dtype, device=device)
    weight = (1.0 + 0.3 * _randn(g, hidden, dtype=torch.float32, device="cpu")).to(dtype=dtype, device=device)

    out = torch.full(shape, float("nan"), dtype=dtype, device=device)
    rms_norm(x, weight, eps, out=out)
    ref = hf_rms_norm(x, weight, eps)

    summed_ref = x + residual
    fused_ref = hf_rms_norm(summed_ref, weight, eps)
    normed, summed = fused_add_rms_norm(x, residual, weight, eps)

    x_inplace, residual_inplace = x.clone(), residual.clone()
    fused_add_rms_norm_(x_inplace, residual_inplace, weight, eps)
    return {
        "rel_err": rel_err(out, ref),
        "fused_rel_err": rel_err(normed, fused_ref),
        "inplace_rel_err": rel_err(x_inplace, fused_ref),
        "residual_mismatch": float((summed != summed_ref).sum() + (residual_inplace != summed_ref).sum()),
        "unwritten": nan_count(out) + nan_count(normed) + nan_count(summed),
    }


def torch_rotary(
    positions: torch.Tensor, x: torch.Tensor, cos_sin_cache: torch.Tensor, rotary_dim: int, is_neox: bool
) -> torch.Tensor:
    """Reference RoPE in x's dtype: x * cos + rotate(x) * sin with cos/sin cast to x's dtype."""
    half = rotary_dim // 2
    cs = cos_sin_cache[positions.long()]
    cos, sin = cs[:, None, :half].to(x.dtype), cs[:, None, half:].to(x.dtype)
    xr = x[..., :rotary_dim]
    if is_neox:
        x1, x2 = xr[..., :half], xr[..., half:]
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    else:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rotated = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    return torch.cat([rotated, x[..., rotary_dim:]], dim=-1)


def check_rotary(
    num_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    rotary_dim: int,
    is_neox: bool,
    device: str,
    dtype: torch.dtype,
    seed: int = 0,
) -> Metrics:
    """``rotary_embedding`` in place on q/k views of a fused qkv tensor, against ``torch_rotary``.

    Metrics: ``rel_err`` over q and k; ``pass_through_changed`` = entries past ``rotary_dim`` that
    changed; ``v_changed`` = entries of the v part of qkv that changed (must stay 0).
    """
    from worker.kernels import rotary_embedding

    g = torch.Generator().manual_seed(seed)
    max_position = 4096
    cos_sin_cache, positions, qkv = _rotary_inputs(g, max_position, num_tokens, num_heads, num_kv_heads, head_dim,
                                                   rotary_dim, dtype, device)
    q_width, kv_width = num_heads * head_dim, num_kv_heads * head_dim
    original = qkv.clone()
    q = qkv[:, :q_width].view(num_tokens, num_heads, head_dim)
    k = qkv[:, q_width : q_width + kv_width].view(num_tokens, num_kv_heads, head_dim)
    q_ref = torch_rotary(positions, q.clone(), cos_sin_cache, rotary_dim, is_neox)
    k_ref = torch_rotary(positions, k.clone(), cos_sin_cache, rotary_dim, is_neox)
    rotary_embedding(positions, q, k, cos_sin_cache, rotary_dim, is_neox)
    orig_q = original[:, :q_width].view_as(q)
    orig_k = original[:, q_width : q_width + kv_width].view_as(k)
    return {
        "rel_err": rel_err(torch.cat([q.flatten(), k.flatten()]), torch.cat([q_ref.flatten(), k_ref.flatten()])),
        "pass_through_changed": float(
            (q[..., rotary_dim:] != orig_q[..., rotary_dim:]).sum()
            + (k[..., rotary_dim:] != orig_k[..., rotary_dim:]).sum()
        ),
        "v_changed": float((qkv[:, q_width + kv_width :] != original[:, q_width + kv_width :]).sum()),
    }


def _rotary_inputs(g: torch.Generator, max_position: int, num_tokens: int, num_heads: int, num_kv_heads: int,
                   head_dim: int, rotary_dim: int, dtype: torch.dtype, device: str):
    """A Llama-3 rope cache, random positions and a random fused qkv [tokens, (heads + 2 kv heads) * dim]."""
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
    cos_sin_cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)
    positions = torch.randint(0, max_position, (num_tokens,), generator=g).to(device)
    qkv = _randn(g, num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype, device=device)
    return cos_sin_cache, positions, qkv


def check_rotary_cache(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, rotary_dim: int,
                       block_size: int, num_padding: int, device: str, dtype: torch.dtype, seed: int = 0,
                       fp8_scales: str | None = None) -> Metrics:
    """``rotary_and_cache`` against ``rotary_embedding`` then ``reshape_and_cache`` on q/k/v views of a
    fused qkv tensor, NaN-filled caches, shuffled slots (``num_padding`` of them -1). The kernels round
    alike, so everything must match exactly. ``fp8_scales`` ("tensor" or "head"): e4m3 caches with
    per-tensor or per-head k/v scales, compared byte for byte. Metrics: ``mismatch`` = q entries that
    differ, ``cache_mismatch`` = cache entries that differ (NaN-aware), ``written`` = cache entries written."""
    from worker.kernels import reshape_and_cache, rotary_embedding
    from worker.kernels.rotary_cache import rotary_and_cache

    g = torch.Generator().manual_seed(seed)
    max_position = 2048
    cos_sin_cache, positions, qkv = _rotary_inputs(g, max_position, num_tokens, num_heads, num_kv_heads, head_dim,
                                                   rotary_dim, dtype, device)
    q_width, kv_width = num_heads * head_dim, num_kv_heads * head_dim
    num_blocks = math.ceil(num_tokens / block_size) + 2
    cache_dtype = torch.float8_e4m3fn if fp8_scales else dtype
    key_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), device=device).to(cache_dtype)
    value_cache = torch.full_like(key_cache, float("nan"))
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=g)[:num_padding]] = -1
    slot_mapping = torch.cat([slots, torch.full((2,), -1, dtype=torch.int64)]).to(device)  # graph-padded
    scales = {}
    if fp8_scales:
        count = num_kv_heads if fp8_scales == "head" else 1
        scales = {"k_scale": (0.01 + 0.02 * torch.rand(count, generator=g)).to(device),
                  "v_scale": (0.01 + 0.02 * torch.rand(count, generator=g)).to(device)}

    def views(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = t[:, :q_width].view(num_tokens, num_heads, head_dim)
        k = t[:, q_width : q_width + kv_width].view(num_tokens, num_kv_heads, head_dim)
        return q, k, t[:, q_width + kv_width :].view(num_tokens, num_kv_heads, head_dim)

    ref_qkv, ref_caches = qkv.clone(), (key_cache.clone(), value_cache.clone())
    q_ref, k_ref, v_ref = views(ref_qkv)
    rotary_embedding(positions, q_ref, k_ref, cos_sin_cache, rotary_dim, True)
    reshape_and_cache(k_ref, v_ref, *ref_caches, slot_mapping, *scales.values())
    q, k, v = views(qkv)
    rotary_and_cache(positions, q, k, v, key_cache, value_cache, slot_mapping, cos_sin_cache, rotary_dim, **scales)
    written = float((~torch.isnan(key_cache.float())).sum() + (~torch.isnan(value_cache.float())).sum())
    return {
        "mismatch": float((q != q_ref).sum()),
        "cache_mismatch": _cache_mismatch((key_cache, value_cache), ref_caches),
        "written": written,
        "expected_written": float(2 * (num_tokens - num_padding) * kv_width),
    }


def check_rotary_cache_head_norms(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int,
                                  num_padding: int, device: str, dtype: torch.dtype, adds_one: bool,
                                  seed: int = 0) -> Metrics:
    """``rotary_and_cache`` with per-head q/k norms (Qwen3's, or Gemma's with ``adds_one``) against the
    norm (worker.model.ops) on each head, then ``rotary_embedding`` and ``reshape_and_cache``, on views
    of a fused qkv tensor, shuffled slots (``num_padding`` of them -1). The sums of squares are added
    in another order, so q and the key cache are compared by relative error; v must match exactly.
    Metrics: ``q_rel_err``, ``key_cache_rel_err`` (over the written slots), ``cache_mismatch`` (the value
    cache, NaN-aware), ``written``; ``k_changed`` (k's own rows must stay as they were)."""
    from worker.kernels import reshape_and_cache, rotary_embedding
    from worker.kernels.rotary_cache import HeadNorms, rotary_and_cache
    from worker.model import ops

    g = torch.Generator().manual_seed(seed)
    cos_sin_cache, positions, qkv = _rotary_inputs(g, 2048, num_tokens, num_heads, num_kv_heads, head_dim,
                                                   head_dim, dtype, device)
    qkv *= 3.0  # rows far from unit RMS: the norm's scale matters
    q_width, kv_width = num_heads * head_dim, num_kv_heads * head_dim
    num_blocks = math.ceil(num_tokens / block_size) + 2
    key_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    value_cache = torch.full_like(key_cache, float("nan"))
    slots = torch.randperm(num_blocks * block_size, generator=g)[:num_tokens]
    slots[torch.randperm(num_tokens, generator=g)[:num_padding]] = -1
    slot_mapping = slots.to(device)
    centre = 0.0 if adds_one else 1.0
    q_w, k_w = ((centre + 0.2 * _randn(g, head_dim, dtype=torch.float32, device=device)).to(dtype) for _ in range(2))
    norm = ops.gemma_rms_norm if adds_one else ops.rms_norm
    eps = 1e-6

    def views(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = t[:, :q_width].view(num_tokens, num_heads, head_dim)
        k = t[:, q_width : q_width + kv_width].view(num_tokens, num_kv_heads, head_dim)
        return q, k, t[:, q_width + kv_width :].view(num_tokens, num_kv_heads, head_dim)

    ref_caches = (key_cache.clone(), value_cache.clone())
    q_ref, k_ref, v_ref = views(qkv.clone())
    q_ref, k_ref = norm(q_ref, q_w, eps).contiguous(), norm(k_ref, k_w, eps).contiguous()
    rotary_embedding(positions, q_ref, k_ref, cos_sin_cache, head_dim, True)
    reshape_and_cache(k_ref, v_ref, *ref_caches, slot_mapping)
    q, k, v = views(qkv)
    k_before = k.clone()
    rotary_and_cache(positions, q, k, v, key_cache, value_cache, slot_mapping, cos_sin_cache, head_dim,
                     HeadNorms(q_w, k_w, eps, adds_one))
    written = ~torch.isnan(ref_caches[0].float())
    return {
        "q_rel_err": rel_err(q, q_ref),
        "key_cache_rel_err": rel_err(key_cache[written], ref_caches[0][written]),
        "cache_mismatch": _cache_mismatch((value_cache,), (ref_caches[1],)) + float(
            (torch.isnan(key_cache.float()) != ~written).sum()),
        "written": float(written.sum() + (~torch.isnan(value_cache.float())).sum()),
        "expected_written": float(2 * (num_tokens - num_padding) * kv_width),
        "k_changed": float((k != k_before).sum()),
    }


def check_silu_and_mul(num_tokens: int, intermediate: int, device: str, dtype: torch.dtype, seed: int = 0) -> Metrics:
    """``silu_and_mul`` against ``F.silu(gate) * up``. Metrics: rel_err, unwritten."""
    from worker.kernels import silu_and_mul

    g = torch.Generator().manual_seed(seed)
    x = _randn(g, num_tokens, 2 * intermediate, dtype=dtype, device=device) * 4.0
    out = torch.full((num_tokens, intermediate), float("nan"), dtype=dtype, device=device)
    silu_and_mul(x, out=out)
    ref = F.silu(x[:, :intermediate]) * x[:, intermediate:]
    return {"rel_err": rel_err(out, ref), "unwritten": nan_count(out)}


def check_gelu_tanh_and_mul(num_tokens: int, intermediate: int, device: str, dtype: torch.dtype,
                            seed: int = 0) -> Metrics:
    """``gelu_tanh_and_mul`` (Gemma's GeGLU) against ``F.gelu(gate, approximate="tanh") * up``.
    Metrics: rel_err, unwritten."""
    from worker.kernels.activation import gelu_tanh_and_mul

    g = torch.Generator().manual_seed(seed)
    x = _randn(g, num_tokens, 2 * intermediate, dtype=dtype, device=device) * 4.0
    out = torch.full((num_tokens, intermediate), float("nan"), dtype=dtype, device=device)
    gelu_tanh_and_mul(x, out=out)
    ref = F.gelu(x[:, :intermediate], approximate="tanh") * x[:, intermediate:]
    return {"rel_err": rel_err(out, ref), "unwritten": nan_count(out)}


def check_gemma_norms(shape: tuple[int, ...], device: str, dtype: torch.dtype, seed: int = 0) -> Metrics:
    """``gemma_rms_norm`` and ``gemma_add_rms_norm`` (with and without the next norm) against the torch
    ops of ``worker.model.ops`` (transformers' formula), the weights around 0 as Gemma's are.

    Metrics: rel_err of the plain norm, of the sandwich's residual sum and of its next norm;
    ``unwritten`` = NaNs left in any output."""
    from worker.kernels.norm import gemma_add_rms_norm, gemma_rms_norm
    from worker.model import ops

    g = torch.Generator().manual_seed(seed)
    eps = 1e-6
    hidden = shape[-1]
    x = _randn(g, *shape, dtype=dtype, device=device) * 3.0
    residual = _randn(g, *shape, dtype=dtype, device=device) * 20.0
    weight = (0.3 * _randn(g, hidden, dtype=torch.float32, device="cpu")).to(dtype=dtype, device=device)
    next_weight = (0.3 * _randn(g, hidden, dtype=torch.float32, device="cpu")).to(dtype=dtype, device=device)

    plain = gemma_rms_norm(x, weight, eps)
    normed, summed = gemma_add_rms_norm(x, residual, weight, eps, next_weight)
    none, summed_alone = gemma_add_rms_norm(x, residual, weight, eps)
    normed_ref, summed_ref = ops.gemma_add_rms_norm(x, residual, weight, eps, next_weight)
    return {
        "rel_err": rel_err(plain, ops.gemma_rms_norm(x, weight, eps)),
        "sum_rel_err": max(rel_err(summed, summed_ref), rel_err(summed_alone, summed_ref)),
        "next_rel_err": rel_err(normed, normed_ref),
        "unwritten": nan_count(plain) + nan_count(normed) + nan_count(summed) + float(none is not None),
    }


def check_head_norms(tokens: int, heads: int, kv_heads: int, head_dim: int, device: str, dtype: torch.dtype,
                     seed: int = 0) -> Metrics:
    """The q/k norms as the attention block calls them: ``rms_norm`` and ``gemma_rms_norm`` on [T, heads,
    D] views of a fused qkv output (rows not uniformly strided, read in place) against the torch ops
    on contiguous copies. Metrics: rel_err (Llama's), gemma_rel_err, ``plain_rows`` = 1 if the view
    could have been read as plain rows (the case would not test the per-head path)."""
    from worker.kernels.norm import gemma_rms_norm, rms_norm
    from worker.model import ops

    g = torch.Generator().manual_seed(seed)
    qkv = _randn(g, tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, device=device) * 3.0
    q = qkv[:, : heads * head_dim].reshape(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].reshape(tokens, kv_heads, head_dim)
    weight = (1.0 + 0.3 * _randn(g, head_dim, dtype=torch.float32, device="cpu")).to(dtype=dtype, device=device)
    errors, gemma_errors = [], []
    for view in (q, k):
        errors.append(rel_err(rms_norm(view, weight, 1e-6), ops.rms_norm(view.contiguous(), weight, 1e-6)))
        gemma_errors.append(rel_err(gemma_rms_norm(view, weight, 1e-6),
                                    ops.gemma_rms_norm(view.contiguous(), weight, 1e-6)))
    try:
        q.view(-1, head_dim)
        plain = 1.0
    except RuntimeError:
        plain = 0.0
    return {"rel_err": max(errors), "gemma_rel_err": max(gemma_errors), "plain_rows": plain}


def check_token_bitmask(num_rows: int, vocab: int, grammar_rows: tuple[int, ...], device: str, seed: int = 0) -> Metrics:
    """``apply_token_bitmask_`` against the torch path (``worker.structured.bitmask.apply_bitmask_torch``):
    random masks, some rows without a grammar. Metrics: mismatched (entries that differ)."""
    from worker.kernels import apply_token_bitmask_
    from worker.structured.bitmask import apply_bitmask_torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_rows, vocab, generator=g).to(device)
    words = (vocab + 31) // 32
    mask = torch.randint(-(2**31), 2**31 - 1, (len(grammar_rows), words), generator=g, dtype=torch.int32).to(device)
    rows = torch.tensor(grammar_rows, dtype=torch.int64, device=device)
    ref = apply_bitmask_torch(logits.clone(), mask, rows)
    got = apply_token_bitmask_(logits.clone(), mask, rows)
    return {"mismatched": int((ref.isinf() != got.isinf()).sum() + ((ref != got) & ~ref.isinf()).sum())}


def check_greedy_argmax(rows: int, vocab: int, device: str, dtype: torch.dtype, seed: int = 0) -> Metrics:
    """``greedy_argmax`` against ``torch.argmax`` on random logits with planted ties: row 0's largest
    value twice in different chunks, row 1's twice in one chunk, the last row all -inf (index 0).
    Metrics: mismatched (rows whose index differs)."""
    from worker.kernels.argmax import CHUNK, greedy_argmax

    g = torch.Generator().manual_seed(seed)
    logits = _randn(g, rows, vocab, dtype=dtype, device=device)
    if rows >= 1 and vocab > CHUNK + 10:
        logits[0, [7, CHUNK + 9]] = 50.0  # the first of the two wins
    if rows >= 2 and vocab > 40:
        logits[1, [vocab - 1, 33]] = 60.0
    if rows >= 3:
        logits[-1] = float("-inf")
    got = greedy_argmax(logits)
    return {"mismatched": float((got != logits.argmax(dim=-1)).sum()) + float(got.dtype != torch.int64)}


def check_fused_moe(num_tokens: int, num_experts: int, top_k: int, hidden: int, intermediate: int, device: str,
                    dtype: torch.dtype, seed: int = 0) -> Metrics:
    """The Triton fused MoE against the torch reference (``worker.model.ops.fused_moe``) on the same
    routing. Metrics: rel_err, unwritten."""
    from worker.kernels import fused_moe
    from worker.model.ops import select_experts
    from worker.model.ops import fused_moe as reference

    g = torch.Generator().manual_seed(seed)
    x = _randn(g, num_tokens, hidden, dtype=dtype, device=device)
    w13 = _randn(g, num_experts, 2 * intermediate, hidden, dtype=dtype, device=device) * hidden**-0.5
    w2 = _randn(g, num_experts, hidden, intermediate, dtype=dtype, device=device) * intermediate**-0.5
    logits = _randn(g, num_tokens, num_experts, dtype=torch.float32, device=device)
    weights, ids = select_experts(logits, top_k, renormalize=True)
    out = fused_moe(x, w13, w2, weights, ids)
    ref = reference(x.float().cpu(), w13.float().cpu(), w2.float().cpu(), weights.cpu(), ids.cpu())
    return {"rel_err": rel_err(out, ref), "unwritten": nan_count(out)}


def check_moe_routing(tokens: int, experts: int, top_k: int, renormalize: bool, device: str,
                      dtype: torch.dtype = torch.float32, seed: int = 0) -> Metrics:
    """The one-launch router (``moe_routing.select_experts``) against the torch one on shuffled
    logits (no ties), and on a row of equal logits (the lower expert indices win). Metrics: ``mismatch`` =
    expert ids that differ (either row set), ``rel_err`` of the weights, ``unwritten`` (NaN weights)."""
    from worker.kernels.moe_routing import select_experts as route
    from worker.model.ops import select_experts

    g = torch.Generator().manual_seed(seed)
    # each row a shuffle of values far enough apart to stay distinct in bfloat16: no tie to break
    levels = torch.linspace(-4.0, 4.0, experts)
    logits = torch.stack([levels[torch.randperm(experts, generator=g)] for _ in range(tokens)]).to(device, dtype)
    weights, ids = route(logits, top_k, renormalize)
    ref_weights, ref_ids = select_experts(logits, top_k, renormalize)
    tied_weights, tied_ids = route(torch.zeros(2, experts, dtype=dtype, device=device), top_k, renormalize)
    expected_tied = torch.arange(top_k, device=device).expand(2, top_k)
    return {
        "mismatch": float((ids != ref_ids).sum() + (tied_ids != expected_tied).sum()),
        "rel_err": rel_err(weights, ref_weights),
        "tied_rel_err": rel_err(tied_weights, torch.full_like(tied_weights, 1 / top_k if renormalize else 1 / experts)),
        "unwritten": nan_count(weights),
    }


def check_moe_align(tokens: int, experts: int, top_k: int, block_m: int, device: str, chunk: int | None = None,
                    seed: int = 0) -> Metrics:
    """The one-launch grouping (``moe_align_kernel.align``) against the torch one (``moe_align``) on a
    random routing: every output element equal. ``chunk``: pairs a step of the program takes (small
    ones make the ranks carry across steps). Metrics: ``mismatch`` = elements that differ (a size
    difference counts every element)."""
    from worker.kernels.moe_align import moe_align
    from worker.kernels.moe_align_kernel import align

    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)]).to(device)
    want = moe_align(ids, experts, block_m)
    got = align(ids, experts, block_m, max_pairs=tokens * top_k, chunk=chunk)
    wrong = 0.0
    for a, b in zip(got, want, strict=True):
        wrong += float((a.cpu().long() != b.cpu().long()).sum()) if a.shape == b.shape else float(max(a.numel(), 1))
    return {"mismatch": wrong}


# ---------------------------------------------------------------- decode GEMV


def check_decode_gemv(rows: int, n: int, k: int, device: str, dtype: torch.dtype, silu: bool = False,
                      bias: bool = False, plan: tuple[int, int, int, int, int] | None = None, seed: int = 0,
                      fp8: bool = False, fp8_math: int = 0, gelu_tanh: bool = False) -> Metrics:
    """``decode_gemv`` against ``F.linear`` (then ``F.silu(gate) * up`` with ``silu``, or with
    ``gelu_tanh`` as well ``F.gelu(gate, approximate="tanh") * up``), twice in a row.

    ``n`` is the output width (with ``silu`` the intermediate size: the weight has 2n rows); ``plan``
    = (block_n, block_k, warps, stages, split_k), else the kernel's own choice. The reference is
    computed in float64 from the same (rounded) operands. ``fp8``: the weight is e4m3 with one float32
    scale per row (as ``Fp8Linear`` quantizes it), the reference its de-quantized value; ``fp8_math`` 1
    meets it in float16 (x first rounded to float16, so the reference is the same product), 2 quantizes x
    to e4m3 per row too (no bias; the reference is the de-quantized x's product, written in x's dtype).
    Metrics: ``rel_err``; ``unwritten``;
    ``repeat_mismatch`` = entries of a second call that differ from the first (split-K sums are in a
    fixed order); ``tickets_left`` = split tickets not re-armed to zero after the calls.
    """
    from worker.kernels.decode_gemv import decode_gemv, workspace
    from worker.kernels.decode_gemv_config import GemvPlan

    g = torch.Generator().manual_seed(seed)
    width = 2 * n if silu else n
    x = _randn(g, rows, k, dtype=dtype, device=device)
    w = _randn(g, width, k, dtype=dtype, device=device) * k**-0.5
    b = _randn(g, width, dtype=dtype, device=device) if bias else None
    scale = None
    if fp8:
        from worker.model.quant.linear import quantize_fp8_per_channel

        w, scale = quantize_fp8_per_channel(w.float())
        scale = scale.reshape(-1) * torch.linspace(0.5, 2.0, width, device=device)  # rows differ in scale
    gemv_plan = GemvPlan(*plan) if plan is not None else None
    out = torch.full((rows, n), float("nan"), dtype=dtype, device=device)
    x_in, x_scale, extra = x, None, {}
    if fp8_math == 1:
        x = x_in = x.half().to(dtype)
        extra = {"fp8_math": 1}
    elif fp8_math == 2:
        x_scale = (x.float().abs().amax(1) / 448.0).clamp_min(1e-12)
        x_in = (x.float() / x_scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
        x = x_in.double() * x_scale.double()[:, None]
        extra = {"x_scale": x_scale}
    if gelu_tanh:
        extra["gelu_tanh"] = True
    decode_gemv(x_in, w, b, silu=silu, plan=gemv_plan, out=out, weight_scale=scale, **extra)
    again = decode_gemv(x_in, w, b, silu=silu, plan=gemv_plan, weight_scale=scale, out=torch.empty_like(out), **extra)
    w_ref = w.double() * scale.double()[:, None] if fp8 else w.double()
    ref = F.linear(x.double(), w_ref, None if b is None else b.double())
    if silu:
        gate, up = ref.to(dtype).chunk(2, dim=-1)
        activated = F.gelu(gate.double(), approximate="tanh") if gelu_tanh else F.silu(gate.double())
        ref = activated.to(dtype).double() * up.double()
    return {
        "rel_err": rel_err(out, ref),
        "unwritten": nan_count(out),
        "repeat_mismatch": float((again != out).sum()),
        "tickets_left": float(workspace(torch.device(device)).tickets.count_nonzero()),
    }


def check_decode_gemv_tuned_plan(rows: int, n: int, k: int, device: str, dtype: torch.dtype,
                                 tuned: tuple[int, int, int, int, int]) -> Metrics:
    """A card's tuned-config file (``ward tune gemv``) in the folder ``WARD_TUNED_CONFIG_FOLDER`` names,
    for a card named as this test's device is made to report: ``decode_gemv`` without a plan must
    take the file's plan for its shape and row class and compute what ``F.linear`` does.
    Metrics: ``rel_err``, ``unwritten``, ``tuned_plan_not_taken`` (1 when the launch's plan is not the
    file's), ``tickets_left``."""
    import os
    import tempfile

    from worker.kernels import decode_gemv as gemv
    from worker.kernels import gemv_tuned
    from worker.kernels.decode_gemv_config import WIDE_ROWS, GemvPlan

    card = "Test Card 80GB"
    plan = GemvPlan(*tuned)
    g = torch.Generator().manual_seed(0)
    x = _randn(g, rows, k, dtype=dtype, device=device)
    w = _randn(g, n, k, dtype=dtype, device=device) * k**-0.5
    shape = gemv_tuned.TunedShape(n, k, False, w.element_size(), rows >= WIDE_ROWS)
    saved = (os.environ.get(gemv_tuned.FOLDER_ENV), gemv.device_name)
    with tempfile.TemporaryDirectory() as folder:
        os.environ[gemv_tuned.FOLDER_ENV] = folder
        gemv_tuned.write_plans(gemv_tuned.device_config_path(card), card, [gemv_tuned.TunedPlan(shape, plan, 1.0, 2.0)])
        gemv_tuned.forget_loaded()
        gemv.device_name = lambda _device: card
        try:
            taken = gemv.plan_for(w, rows=rows)
            out = torch.full((rows, n), float("nan"), dtype=dtype, device=device)
            gemv.decode_gemv(x, w, out=out)
        finally:
            if saved[0] is None:
                os.environ.pop(gemv_tuned.FOLDER_ENV, None)
            else:
                os.environ[gemv_tuned.FOLDER_ENV] = saved[0]
            gemv.device_name = saved[1]
            gemv_tuned.forget_loaded()
    return {
        "rel_err": rel_err(out, F.linear(x.double(), w.double())),
        "unwritten": nan_count(out),
        "tuned_plan_not_taken": float(taken != plan),
        "tickets_left": float(gemv.workspace(torch.device(device)).tickets.count_nonzero()),
    }


@contextlib.contextmanager
def _fp8_layers_on(device: str):
    """Off CUDA: the FP8 layers believe FP8 tensor cores are there (their e4m3 GEMV runs in the
    interpreter) and quantize with torch operations (the interpreter rounds the quantization kernel's
    e4m3 casts otherwise than the card); restored after. On CUDA, nothing changes."""
    from worker.model.quant import linear

    saved = (linear._cuda_fp8_ok, linear.FP8_QUANT_KERNEL)
    if device == "cpu":
        linear._cuda_fp8_ok = lambda _device: True
        linear.FP8_QUANT_KERNEL = False
    try:
        yield
    finally:
        linear._cuda_fp8_ok, linear.FP8_QUANT_KERNEL = saved


def check_fp8_w8a8_gemv_layer(rows: int, in_features: int, out_features: int, bias: bool, device: str,
                              dtype: torch.dtype) -> Metrics:
    """``Fp8DecodeGemvLinear`` taking the e4m3-by-e4m3 GEMV (``WARD_FP8_GEMV_W8A8``) against W8A8
    computed in float64 from the same e4m3 operands (the input quantized per row as the layer's W8A8
    path quantizes it): a float input (quantized in the layer), an ``Fp8Activation`` (quantized by the
    kernel before it) and, for a fused gate_up, ``forward_silu_and_mul`` of both (the quantized rows
    through the SiLU epilogue, as the MLP hands them over when its down_proj widens); off CUDA as
    ``_fp8_layers_on`` sets the layers up. Metrics: ``rel_err`` (the worst of them), ``not_w8a8`` (1 when the layer
    did not take the e4m3-x path)."""
    import torch.nn.functional as F
    from torch import nn

    from worker.model import decode_linear
    from worker.model.quant.config import QuantConfig
    from worker.model.quant.linear import Fp8Activation, Fp8Linear, quantize_fp8_per_token

    g = torch.Generator().manual_seed(3)
    dense = nn.Linear(in_features, out_features, bias=bias, dtype=dtype)
    with torch.no_grad():
        dense.weight.copy_(_randn(g, out_features, in_features, dtype=dtype, device="cpu") * in_features**-0.5)
        if bias:
            dense.bias.copy_(_randn(g, out_features, dtype=dtype, device="cpu"))
    with _fp8_layers_on(device):
        fp8 = Fp8Linear.from_float(dense, QuantConfig("fp8", "fp8")).to(device)
        layer = decode_linear.Fp8DecodeGemvLinear(fp8, w8a8=True, silu_epilogue_w8a8=out_features % 2 == 0)
        x = _randn(g, rows, in_features, dtype=dtype, device=device)
        codes, scales = quantize_fp8_per_token(x)
        quantized = Fp8Activation(codes, scales, dtype)
        w64 = layer.weight.double() * layer.weight_scale.double().reshape(-1, 1)
        ref = F.linear(codes.double() * scales.double(), w64, None if layer.bias is None else layer.bias.double())
        errors = [rel_err(layer(x), ref), rel_err(layer(quantized), ref)]
        if out_features % 2 == 0:
            gate, up = ref.to(dtype).double().split(out_features // 2, dim=-1)
            activated = F.silu(gate).to(dtype).double() * up
            errors += [rel_err(layer.forward_silu_and_mul(x), activated),
                       rel_err(layer.forward_silu_and_mul(quantized), activated)]
        took = layer.w8a8 and layer.takes_fp8_activation(rows, x)
    return {"rel_err": max(errors), "not_w8a8": 0.0 if took else 1.0}


def check_fp8_w8a8_mlp_normed(rows: int, hidden: int, inter: int, device: str, dtype: torch.dtype) -> Metrics:
    """The Llama MLP with ``WARD_FP8_GEMV_W8A8=normed``'s layers: rows the norm handed over quantized go
    through gate_up's e4m3-by-e4m3 GEMV with the SiLU epilogue, and down_proj widens its e4m3 weights
    over the bf16 product (no launch added). Against float64 from the same operands. Metrics:
    ``rel_err``; ``unfused`` (1 when the MLP took gate_up's product instead of the SiLU epilogue)."""
    import torch.nn.functional as F
    from torch import nn

    from worker.model import decode_linear
    from worker.model import ops as torch_ops
    from worker.model.llama import MLP
    from worker.model.quant.config import QuantConfig
    from worker.model.quant.linear import Fp8Activation, Fp8Linear, quantize_fp8_per_token

    g = torch.Generator().manual_seed(5)
    layers = {}
    for name, (n, k) in {"gate_up": (2 * inter, hidden), "down": (hidden, inter)}.items():
        dense = nn.Linear(k, n, bias=False, dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(_randn(g, n, k, dtype=dtype, device="cpu") * k**-0.5)
        layers[name] = Fp8Linear.from_float(dense, QuantConfig("fp8", "fp8")).to(device)
    with _fp8_layers_on(device):
        mlp = MLP.__new__(MLP)
        nn.Module.__init__(mlp)
        mlp.gate_up_proj = decode_linear.Fp8DecodeGemvLinear(layers["gate_up"], w8a8=True, silu_epilogue_w8a8=True)
        mlp.down_proj = decode_linear.Fp8DecodeGemvLinear(layers["down"])
        mlp.ops = torch_ops
        fused = []
        silu_gemv = mlp.gate_up_proj.forward_silu_and_mul
        mlp.gate_up_proj.forward_silu_and_mul = lambda x: fused.append(1) or silu_gemv(x)
        x = _randn(g, rows, hidden, dtype=dtype, device=device)
        codes, scales = quantize_fp8_per_token(x)
        got = mlp(Fp8Activation(codes, scales, dtype))

    def dequantized(layer: Fp8Linear) -> torch.Tensor:
        return layer.weight.double() * layer.weight_scale.double().reshape(-1, 1)

    gate, up = F.linear(codes.double() * scales.double(), dequantized(layers["gate_up"])).to(dtype).double().chunk(2, -1)
    activated = (F.silu(gate).to(dtype).double() * up).to(dtype)
    ref = F.linear(activated.double(), dequantized(layers["down"]))
    return {"rel_err": rel_err(got, ref), "unfused": 0.0 if fused else 1.0}


def check_decode_gemv_norm_fusion(rows: int, hidden: int, inter: int, device: str, dtype: torch.dtype,
                                  o_plan: tuple[int, int, int, int, int] | None = None,
                                  up_plan: tuple[int, int, int, int, int] | None = None, seed: int = 0) -> Metrics:
    """The post-attention RMSNorm fused away: ``decode_gemv_add_residual`` (o_proj plus the residual,
    with per-tile sums of squares) then ``decode_gemv_rms_norm`` (gate_up with the SiLU epilogue on
    the normalised sum), against the unfused chain (``decode_gemv``, the torch ``fused_add_rms_norm``,
    ``decode_gemv`` with SiLU). Metrics: h_rel_err (the new residual), sums_rel_err (each row's
    sum of squares), rel_err (the MLP activation), unwritten."""
    from worker.kernels.decode_gemv import decode_gemv, decode_gemv_add_residual, decode_gemv_rms_norm
    from worker.kernels.decode_gemv_config import GemvPlan
    from worker.model.ops import fused_add_rms_norm

    g = torch.Generator().manual_seed(seed)
    attn = _randn(g, rows, hidden, dtype=dtype, device=device)
    o_w = _randn(g, hidden, hidden, dtype=dtype, device=device) * hidden**-0.5
    residual = _randn(g, rows, hidden, dtype=dtype, device=device)
    norm_w = (1 + 0.1 * _randn(g, hidden, dtype=torch.float32, device="cpu")).to(dtype=dtype, device=device)
    up_w = _randn(g, 2 * inter, hidden, dtype=dtype, device=device) * hidden**-0.5
    o_p = GemvPlan(*o_plan) if o_plan else None
    up_p = GemvPlan(*up_plan) if up_plan else None
    h, sums = decode_gemv_add_residual(attn, o_w, residual, plan=o_p)
    act = decode_gemv_rms_norm(h, sums, norm_w, 1e-5, up_w, silu=True, plan=up_p)
    normed, h_ref = fused_add_rms_norm(decode_gemv(attn, o_w, plan=o_p), residual, norm_w, 1e-5)
    ref = decode_gemv(normed, up_w, silu=True, plan=up_p)
    row_sums = sums[:, :rows].sum(dim=0)
    return {"h_rel_err": rel_err(h, h_ref), "sums_rel_err": rel_err(row_sums, h_ref.double().pow(2).sum(dim=1)),
            "rel_err": rel_err(act, ref), "unwritten": nan_count(act) + nan_count(h)}


# ---------------------------------------------------------------- host-side input checks


def check_input_validation(device: str) -> dict[str, list[str]]:
    """Call every kernel with malformed inputs; returns the names of calls that did NOT raise
    ``KernelInputError`` (``unraised``) and of every call tried (``tried``)."""
    from worker.kernels import (
        KernelInputError,
        fused_add_rms_norm,
        reshape_and_cache,
        rms_norm,
        rotary_embedding,
        silu_and_mul,
        unified_attention,
    )
    from worker.kernels.argmax import greedy_argmax
    from worker.kernels.decode_gemv import decode_gemv, decode_gemv_add_residual, decode_gemv_rms_norm
    from worker.kernels.rotary_cache import rotary_and_cache

    def t(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.ones(*shape, dtype=dtype, device=device)

    i32 = torch.int32
    q, cache, qsl, lens, tables = t(3, 4, 16), t(4, 16, 2, 16), t(4, dtype=i32), t(3, dtype=i32), t(3, 2, dtype=i32)
    attention_ok = dict(
        q=q, key_cache=cache, value_cache=cache, out=t(3, 4, 16), query_start_loc=qsl, seq_lens=lens,
        block_tables=tables, max_query_len=1, max_seq_len=5, scale=0.25,
    )
    def attention(**changes: object) -> None:
        unified_attention(**{**attention_ok, **changes})

    i64 = torch.int64
    bad_calls = {
        "attention_q_2d": lambda: attention(q=t(3, 64), out=t(3, 64)),
        "attention_heads_not_multiple": lambda: attention(q=t(3, 3, 16), out=t(3, 3, 16)),
        "attention_head_dim_mismatch": lambda: attention(q=t(3, 4, 32), out=t(3, 4, 32)),
        "attention_out_shape": lambda: attention(out=t(2, 4, 16)),
        "attention_float_index": lambda: attention(seq_lens=t(3)),
        "attention_short_query_start_loc": lambda: attention(query_start_loc=t(3, dtype=i32)),
        "attention_zero_window": lambda: attention(sliding_window=0),
        "attention_zero_splits": lambda: attention(num_splits=0),
        "attention_strided_head_dim": lambda: attention(q=t(3, 4, 32)[:, :, ::2]),
        "attention_int_q": lambda: attention(q=t(3, 4, 16, dtype=i32)),
        "cache_short_slot_mapping": lambda: reshape_and_cache(t(3, 2, 16), t(3, 2, 16), cache, cache, t(2, dtype=i64)),
        "cache_row_shape": lambda: reshape_and_cache(t(3, 4, 16), t(3, 4, 16), cache, cache, t(3, dtype=torch.int64)),
        "cache_float_slots": lambda: reshape_and_cache(t(3, 2, 16), t(3, 2, 16), cache, cache, t(3)),
        "rms_norm_weight_size": lambda: rms_norm(t(2, 8), t(7), 1e-6),
        "rms_norm_out_dtype": lambda: rms_norm(t(2, 8), t(8), 1e-6, out=t(2, 8, dtype=torch.float16)),
        "fused_add_residual_shape": lambda: fused_add_rms_norm(t(2, 8), t(3, 8), t(8), 1e-6),
        "rotary_odd_dim": lambda: rotary_embedding(t(3, dtype=torch.int64), t(3, 4, 16), t(3, 2, 16), t(8, 5)),
        "rotary_dim_too_large": lambda: rotary_embedding(t(3, dtype=torch.int64), t(3, 4, 16), t(3, 2, 16), t(8, 32)),
        "rotary_float_positions": lambda: rotary_embedding(t(3), t(3, 4, 16), t(3, 2, 16), t(8, 16)),
        "silu_odd_width": lambda: silu_and_mul(t(3, 7)),
        "gemv_too_many_rows": lambda: decode_gemv(t(9, 16), t(32, 16)),
        "gemv_k_mismatch": lambda: decode_gemv(t(2, 16), t(32, 24)),
        "gemv_dtype_mismatch": lambda: decode_gemv(t(2, 16), t(32, 16, dtype=torch.float16)),
        "gemv_silu_odd_rows": lambda: decode_gemv(t(2, 16), t(33, 16), silu=True),
        "gemv_bias_size": lambda: decode_gemv(t(2, 16), t(32, 16), t(31)),
        "gemv_residual_shape": lambda: decode_gemv_add_residual(t(2, 16), t(32, 16), t(2, 16)),
        "gemv_norm_sums_width": lambda: decode_gemv_rms_norm(t(2, 16), t(4, 8), t(16), 1e-6, t(32, 16)),
        "gemv_norm_weight_size": lambda: decode_gemv_rms_norm(t(2, 16), t(4, 16), t(15), 1e-6, t(32, 16)),
        "argmax_one_dim": lambda: greedy_argmax(t(16)),
        "argmax_int_logits": lambda: greedy_argmax(t(2, 16, dtype=i32)),
        "argmax_strided_vocab": lambda: greedy_argmax(t(2, 32)[:, ::2]),
        "rotary_cache_row_shape": lambda: rotary_and_cache(t(3, dtype=i64), t(3, 4, 16), t(3, 4, 16), t(3, 4, 16),
                                                           cache, cache, t(3, dtype=i64), t(8, 16)),
        "rotary_cache_short_slots": lambda: rotary_and_cache(t(3, dtype=i64), t(3, 4, 16), t(3, 2, 16), t(3, 2, 16),
                                                             cache, cache, t(2, dtype=i64), t(8, 16)),
        "rotary_cache_fp8": lambda: rotary_and_cache(t(3, dtype=i64), t(3, 4, 16), t(3, 2, 16), t(3, 2, 16),
                                                     t(4, 16, 2, 16, dtype=torch.float8_e4m3fn),
                                                     t(4, 16, 2, 16, dtype=torch.float8_e4m3fn), t(3, dtype=i64),
                                                     t(8, 16)),
    }
    unraised = []
    for name, call in bad_calls.items():
        try:
            call()
        except KernelInputError:
            continue
        except Exception as err:  # the wrong error type counts as a miss, with its type
            unraised.append(f"{name} ({type(err).__name__})")
            continue
        unraised.append(name)
    return {"unraised": unraised, "tried": list(bad_calls)}
