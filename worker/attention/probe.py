"""A start-up self-check for optional attention backends.

An optional backend (flash-attn, FlashInfer) comes from a package Ward does not pin; a version with
a different API, a build without kernels for this card, or a dtype or head size it does not cover
would otherwise surface as a crash or as wrong tokens mid-traffic. Before such a backend is used,
one mixed step (a prefill, a decode and a chunk with cached context) at the model's real head
shape and dtype runs through it and through the torch reference; it is used only if they agree.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from worker.attention.backend import AttentionBackend, AttentionMetadata
from worker.attention.torch_backend import gather_kv, reference_attention

TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


@dataclass(frozen=True)
class AttentionShape:
    """What a backend must serve: the model's heads and the engine's dtype and block size."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    block_size: int
    sliding_windows: tuple[int | None, ...] = (None,)  # the distinct windows of the model's layers
    logit_softcap: float | None = None  # Gemma 2: a backend that cannot soft-cap fails the check


def probe_step(shape: AttentionShape) -> tuple[list[int], list[int]]:
    """Context lengths and query lengths of the probe's step: a prefill over several blocks, a
    decode, and a chunk whose earlier context is already cached."""
    bs = shape.block_size
    return [2 * bs + 5, bs + 3, 2 * bs], [2 * bs + 5, 1, bs // 2 + 1]


def check_backend(backend: AttentionBackend, device: torch.device, shape: AttentionShape, seed: int = 0) -> str | None:
    """None when ``backend`` matches the torch reference on one mixed step per sliding window;
    else what went wrong."""
    for window in shape.sliding_windows:
        problem = _check_one(backend, device, shape, window, seed)
        if problem is not None:
            return problem if window is None else f"{problem} (sliding window {window})"
    return None


def _check_one(
    backend: AttentionBackend, device: torch.device, shape: AttentionShape, window: int | None, seed: int
) -> str | None:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rng = random.Random(seed)
    H, Hkv, D, bs = shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.block_size
    lens, q_lens = probe_step(shape)
    per_req = [-(-n // bs) for n in lens]
    num_blocks = sum(per_req) + 2
    free = list(range(num_blocks))
    rng.shuffle(free)  # scattered pages: the backend must follow the block table
    tables, slots = [], []
    for n, q, count in zip(lens, q_lens, per_req):
        table = [free.pop() for _ in range(count)]
        tables.append(table + [0] * (max(per_req) - count))
        slots += [table[p // bs] * bs + p % bs for p in range(n - q, n)]

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen).to(device=device, dtype=shape.dtype)

    key_cache, value_cache = rand(num_blocks, bs, Hkv, D), rand(num_blocks, bs, Hkv, D)
    T = sum(q_lens)
    q, k, v = rand(T, H, D), rand(T, Hkv, D), rand(T, Hkv, D)
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    meta = AttentionMetadata(
        num_tokens=T, num_reqs=len(lens),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        max_query_len=max(q_lens), max_seq_len=max(lens), query_start_loc_cpu=starts, seq_lens_cpu=lens,
    )
    scale = D**-0.5
    try:
        if shape.logit_softcap is None:
            impl = backend.make_impl(H, Hkv, D, scale, window)
        else:
            impl = backend.make_impl(H, Hkv, D, scale, window, logit_softcap=shape.logit_softcap)
        out = impl.forward(q, k, v, (key_cache, value_cache), meta)
    except Exception as exc:  # any failure of a foreign package means: do not use it
        return f"{type(exc).__name__}: {exc}"
    if tuple(out.shape) != (T, H, D):
        return f"output shape {tuple(out.shape)}, expected {(T, H, D)}"
    worst = 0.0
    for i, n in enumerate(lens):
        kk, vv = gather_kv((key_cache, value_cache), meta.block_tables[i], n)
        ref = reference_attention(q[starts[i] : starts[i + 1]].float(), kk.float(), vv.float(), scale, window,
                                  shape.logit_softcap)
        got = out[starts[i] : starts[i + 1]].float()
        err = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
        if err != err:  # NaN
            return f"request {i}: NaN in the output"
        worst = max(worst, err)
    limit = TOLERANCE.get(shape.dtype, 2e-2)
    if worst > limit:
        return f"relative error {worst:.3g} against the torch reference (limit {limit:g})"
    return None
