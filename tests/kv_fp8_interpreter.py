"""Run under TRITON_INTERPRET=1: the Triton cache write and paged attention over an e4m3 cache
against the torch backend on the same inputs (small shapes, float32). Prints one JSON line.

K and V are drawn as e4m3 values times power-of-two scales, so dividing by the scale is exact and
no value needs rounding into e4m3: the interpreter's own float32 -> e4m3 conversion drops the carry
when a value rounds up to the next power of two (7.99 becomes 4.0), which compiled kernels do not."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_kv_cache_fp8 import _meta  # noqa: E402
from worker.attention.torch_backend import TorchAttention, write_kv_cache  # noqa: E402
from worker.attention.triton_backend import TritonAttention  # noqa: E402

FP8 = torch.float8_e4m3fn


def case(per_head: bool, q_lens, seq_lens, num_splits) -> dict:
    torch.manual_seed(len(q_lens) + int(per_head))
    H, Hkv, D, bs = 4, 2, 16, 4
    tables = [list(range(i * 8, i * 8 + 8)) for i in range(len(q_lens))]
    meta = _meta(q_lens, seq_lens, tables, bs)
    ctx = _meta([s - n for s, n in zip(seq_lens, q_lens)], [s - n for s, n in zip(seq_lens, q_lens)], tables, bs)
    ks = torch.tensor([2.0**-6, 2.0**-5]) if per_head else torch.tensor([2.0**-6])
    vs = torch.tensor([2.0**-5, 2.0**-7]) if per_head else torch.tensor([2.0**-5])

    def kv(n: int, scale: torch.Tensor) -> torch.Tensor:  # e4m3-representable after division by scale
        return (torch.randn(n, Hkv, D) * 40).to(FP8).float() * scale.view(1, -1, 1)

    kc, vc = kv(ctx.num_tokens, ks), kv(ctx.num_tokens, vs)
    q, k, v = torch.randn(meta.num_tokens, H, D), kv(meta.num_tokens, ks), kv(meta.num_tokens, vs)
    outs, caches = [], []
    triton_impl = TritonAttention(H, Hkv, D, D**-0.5, None)
    triton_impl.num_splits = num_splits
    for impl in (TorchAttention(H, Hkv, D, D**-0.5, None), triton_impl):
        impl.k_scale, impl.v_scale = ks, vs
        cache = (torch.zeros(8 * len(q_lens), bs, Hkv, D, dtype=FP8), torch.zeros(8 * len(q_lens), bs, Hkv, D, dtype=FP8))
        write_kv_cache(kc, vc, cache, ctx.slot_mapping, ks, vs)
        outs.append(impl.forward(q, k, v, cache, meta))
        caches.append(cache)
    same_bytes = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(caches[0], caches[1]))
    err = float((outs[0] - outs[1]).abs().max() / outs[0].abs().max())
    return {"same_cache_bytes": same_bytes, "rel_err": err}


def rotary_case(per_head: bool) -> dict:
    """The Triton backend's fused rotary cache write into an e4m3 cache (``forward_rotary``) against its
    two launches (the rotary kernel, then ``forward``'s cache write): the same cache bytes and output
    (both go through the interpreter's one e4m3 conversion, so they must agree to the bit)."""
    from worker.kernels.rotary import rotary_embedding

    torch.manual_seed(7 + int(per_head))
    H, Hkv, D, bs = 4, 2, 16, 4
    q_lens, seq_lens = [5, 1, 3], [5, 9, 12]
    tables = [list(range(i * 8, i * 8 + 8)) for i in range(len(q_lens))]
    meta = _meta(q_lens, seq_lens, tables, bs)
    ks = torch.tensor([2.0**-6, 2.0**-5]) if per_head else torch.tensor([2.0**-6])
    vs = torch.tensor([2.0**-5, 2.0**-7]) if per_head else torch.tensor([2.0**-5])
    positions = torch.tensor([p for s, n in zip(seq_lens, q_lens) for p in range(s - n, s)])
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    freqs = torch.outer(torch.arange(64, dtype=torch.float32), inv_freq)
    cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
    q, k, v = (torch.randn(meta.num_tokens, h, D) * 0.3 for h in (H, Hkv, Hkv))
    outs, caches = [], []
    for fused in (True, False):
        impl = TritonAttention(H, Hkv, D, D**-0.5, None)
        impl.k_scale, impl.v_scale = ks, vs
        cache = (torch.zeros(8 * len(q_lens), bs, Hkv, D, dtype=FP8), torch.zeros(8 * len(q_lens), bs, Hkv, D, dtype=FP8))
        qi, ki = q.clone(), k.clone()
        if fused:
            outs.append(impl.forward_rotary(positions, qi, ki, v, cos_sin, D, cache, meta))
        else:
            qi, ki = rotary_embedding(positions, qi, ki, cos_sin, D, True)
            outs.append(impl.forward(qi, ki, v, cache, meta))
        caches.append(cache)
    same_bytes = all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(caches[0], caches[1]))
    written = int(sum((c.view(torch.uint8) != 0).sum() for c in caches[0]))
    return {"same_cache_bytes": same_bytes and written > 0, "rel_err": float((outs[0] - outs[1]).abs().max()
                                                                             / outs[1].abs().max())}


if __name__ == "__main__":
    print(json.dumps({
        "rotary_fused_per_tensor": rotary_case(False),
        "rotary_fused_per_head": rotary_case(True),
        "mixed_per_tensor": case(False, [5, 1, 3], [5, 9, 12], 1),
        "mixed_per_head_split": case(True, [5, 1, 3], [5, 9, 12], 2),
        "decode_per_head": case(True, [1, 1], [7, 20], None),
    }))
