"""Backend choice at start-up, and every optional backend against the torch reference where it runs."""
from __future__ import annotations

import random

import pytest
import torch

from tests.paged_driver import rel_err
from worker.attention.backend import AttentionMetadata, get_backend
from worker.attention.flash_attn_backend import flash_attn_available
from worker.attention.torch_backend import gather_kv, reference_attention


def test_auto_picks_the_torch_reference_on_cpu():
    assert get_backend("auto", torch.device("cpu")).name == "torch"
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("nonsense", torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_auto_takes_triton_unless_flash_attn_suits_the_block_size():
    dev = torch.device("cuda")
    assert get_backend("auto", dev, block_size=16).name == "triton"
    expected = "flash_attn" if flash_attn_available() else "triton"
    assert get_backend("auto", dev, block_size=256).name == expected


@pytest.mark.gpu
@pytest.mark.skipif(not flash_attn_available(), reason="flash-attn is not installed (optional fast path)")
def test_flash_attn_backend_matches_the_reference():
    torch.manual_seed(0)
    rng = random.Random(0)
    H, Hkv, D, bs = 32, 8, 128, 256
    dev, dt = "cuda", torch.bfloat16
    kc = torch.randn(64, bs, Hkv, D, device=dev, dtype=dt)
    vc = torch.randn_like(kc)
    lens, qlens = [700, 1, 300], [700, 1, 45]  # a prefill, a decode, a chunk with cached context
    tables, slots, free = [], [], list(range(64))
    rng.shuffle(free)
    for L, q in zip(lens, qlens):
        t = [free.pop() for _ in range(-(-L // bs))]
        tables.append(t + [0] * (4 - len(t)))
        slots += [t[p // bs] * bs + p % bs for p in range(L - q, L)]
    T = sum(qlens)
    q = torch.randn(T, H, D, device=dev, dtype=dt)
    k, v = torch.randn(T, Hkv, D, device=dev, dtype=dt), torch.randn(T, Hkv, D, device=dev, dtype=dt)
    starts = [0, 700, 701, 746]
    meta = AttentionMetadata(T, 3, torch.tensor(starts, dtype=torch.int32, device=dev),
                             torch.tensor(lens, dtype=torch.int32, device=dev),
                             torch.tensor(tables, dtype=torch.int32, device=dev),
                             torch.tensor(slots, dtype=torch.long, device=dev), 700, 700, starts, lens)
    impl = get_backend("flash_attn", torch.device(dev)).make_impl(H, Hkv, D, D**-0.5)
    out = impl.forward(q, k, v, (kc, vc), meta)
    for i in range(3):
        kk, vv = gather_kv((kc, vc), meta.block_tables[i], lens[i])
        ref = reference_attention(q[starts[i]:starts[i + 1]].float(), kk.float(), vv.float(), D**-0.5)
        assert rel_err(out[starts[i]:starts[i + 1]].float(), ref) < 1e-2
