"""FP8 KV cache (``kv_cache_dtype="fp8"``): e4m3 K/V with per-tensor or per-head scales, half the
bytes of a 16-bit cache; the torch backend writes ``x / scale`` and reads ``q * scale`` (CPU), the
Triton kernels read the same cache (GPU-marked, against the torch backend on identical e4m3 data).
"""
from __future__ import annotations

import pytest
import torch

from tests.test_quantization import PROMPTS, _greedy, _prefill_logits, _write, base, one_torch_thread  # noqa: F401
from worker.attention.backend import AttentionMetadata
from worker.attention.torch_backend import TorchAttention, from_fp8, gather_kv, write_kv_cache

FP8 = torch.float8_e4m3fn


def _meta(q_lens, seq_lens, block_tables, block_size, device="cpu"):
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    slots = []
    for i, (q, s) in enumerate(zip(q_lens, seq_lens)):
        for pos in range(s - q, s):
            slots.append(block_tables[i][pos // block_size] * block_size + pos % block_size)
    width = max(len(b) for b in block_tables)
    bt = torch.tensor([b + [0] * (width - len(b)) for b in block_tables], dtype=torch.int32, device=device)
    return AttentionMetadata(
        num_tokens=starts[-1], num_reqs=len(q_lens),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device), block_tables=bt,
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device), max_query_len=max(q_lens),
        max_seq_len=max(seq_lens), query_start_loc_cpu=starts, seq_lens_cpu=list(seq_lens))


@pytest.mark.parametrize("per_head", [False, True])
def test_fp8_cache_round_trip_keeps_e4m3_precision(per_head):
    torch.manual_seed(0)
    k, v = torch.randn(10, 2, 16) * 3, torch.randn(10, 2, 16)
    # scales that keep every value inside e4m3's range (|x| / scale <= 448)
    ks = k.abs().amax(dim=(0, 2)) / 400 if per_head else k.abs().max().reshape(1) / 400
    vs = v.abs().amax(dim=(0, 2)) / 400 if per_head else v.abs().max().reshape(1) / 400
    cache = (torch.zeros(4, 4, 2, 16, dtype=FP8), torch.zeros(4, 4, 2, 16, dtype=FP8))
    write_kv_cache(k, v, cache, torch.arange(10), ks, vs)
    kk, vv = gather_kv(cache, torch.tensor([0, 1, 2]), 10)
    assert kk.dtype == FP8
    # e4m3 keeps 3 mantissa bits: relative error at most 2^-4 (values far above the smallest normal)
    assert ((from_fp8(kk, ks) - k).abs() <= k.abs() / 16 + 1e-3).all()
    assert ((from_fp8(vv, vs) - v).abs() <= v.abs() / 16 + 1e-3).all()


def test_attention_over_an_fp8_cache_is_close_to_the_float_cache():
    torch.manual_seed(1)
    q_lens, seq_lens, tables = [5, 1, 3], [5, 9, 12], [[3, 0], [5, 1, 7], [2, 4, 6]]
    T = sum(q_lens)
    q, k, v = torch.randn(T, 4, 16), torch.randn(T, 2, 16), torch.randn(T, 2, 16)
    n_ctx = sum(seq_lens) - T
    kc, vc = torch.randn(n_ctx, 2, 16), torch.randn(n_ctx, 2, 16)
    outs = {}
    for dtype in (torch.float32, FP8):
        impl = TorchAttention(4, 2, 16, 0.25, None)
        impl.k_scale = impl.v_scale = torch.tensor([0.01, 0.012])  # randn / 0.01 stays inside +-448
        cache = (torch.zeros(8, 4, 2, 16, dtype=dtype), torch.zeros(8, 4, 2, 16, dtype=dtype))
        # the context before this step's queries: write it first, as earlier steps would have
        ctx = _meta([s - n for s, n in zip(seq_lens, q_lens)], [s - n for s, n in zip(seq_lens, q_lens)], tables, 4)
        write_kv_cache(kc, vc, cache, ctx.slot_mapping, impl.k_scale, impl.v_scale)
        outs[dtype] = impl.forward(q, k, v, cache, _meta(q_lens, seq_lens, tables, 4))
    err = (outs[FP8] - outs[torch.float32]).abs().max() / outs[torch.float32].abs().max()
    assert 0 < err < 0.05


def test_fp8_kv_cache_engine_halves_the_bytes_and_stays_close(tmp_path_factory, base):  # noqa: F811
    cfg, state = base
    model_dir = _write(tmp_path_factory.mktemp("kvfp8"), cfg, state, None)
    got, llm = _greedy(model_dir, kv_cache_dtype="fp8")
    want, ref = _greedy(model_dir)
    runner = llm.engine.runner
    assert runner.kv_caches[0][0].dtype == FP8
    assert runner.kv_block_bytes() * 4 == ref.engine.runner.kv_block_bytes()  # float32 model: a quarter
    a, b = _prefill_logits(llm, PROMPTS[2]), _prefill_logits(ref, PROMPTS[2])
    # e4m3 keeps 3 mantissa bits (up to 6% per element, about 3.6% RMS); this random two-layer model
    # passes it on to its logits at about 4.4% (relative norm)
    err = float((a - b).norm() / b.norm())
    assert 0 < err < 0.08, err
    # a random model's logits are nearly tied, so later tokens may part ways; the first agree
    assert [g[0] for g in got] == [w[0] for w in want]


def test_checkpoint_kv_scales_per_head_are_loaded(tmp_path_factory, base):  # noqa: F811
    cfg, state = base
    state = dict(state)
    for i in range(cfg.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor([0.01 * (i + 1), 0.02])
        state[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor(0.005 * (i + 1))
    model_dir = _write(tmp_path_factory.mktemp("kvscales"), cfg, state, None)
    _, llm = _greedy(model_dir, kv_cache_dtype="fp8")
    impl = llm.engine.runner.model.layers[1].self_attn.attn
    assert torch.equal(impl.k_scale, torch.tensor([0.02, 0.02]))
    assert torch.allclose(impl.v_scale, torch.tensor([0.01]))
    # a float cache has no use for them: the same checkpoint loads without an FP8 cache
    _greedy(model_dir)


def test_fp8_kv_cache_refuses_backends_that_cannot_read_it():
    from worker.errors import ModelLoadError
    from worker.model.quant.kv_cache import fp8_kv_backend

    with pytest.raises(ModelLoadError, match="flash_attn"):
        fp8_kv_backend("flash_attn", FP8, torch.device("cuda"))
    assert fp8_kv_backend("auto", FP8, torch.device("cuda")) == "triton"
    assert fp8_kv_backend("auto", FP8, torch.device("cpu")) == "auto"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("per_head", [False, True])
def test_triton_attention_reads_the_fp8_cache_like_the_torch_backend(per_head):
    from worker.attention.triton_backend import TritonAttention

    torch.manual_seed(2)
    dev = "cuda"
    H, Hkv, D, bs = 32, 8, 128, 16
    q_lens, seq_lens = [37, 1, 1, 200], [37, 513, 90, 300]
    tables = [list(range(i * 40, i * 40 + 40)) for i in range(4)]
    meta = _meta(q_lens, seq_lens, tables, bs, dev)
    T = meta.num_tokens
    ks = (torch.rand(Hkv, device=dev) * 0.02 + 0.005) if per_head else torch.tensor([0.01], device=dev)
    vs = (torch.rand(Hkv, device=dev) * 0.02 + 0.005) if per_head else torch.tensor([0.02], device=dev)
    ctx = _meta([s - n for s, n in zip(seq_lens, q_lens)], [s - n for s, n in zip(seq_lens, q_lens)], tables, bs, dev)
    kc = torch.randn(ctx.num_tokens, Hkv, D, device=dev, dtype=torch.bfloat16)
    vc = torch.randn(ctx.num_tokens, Hkv, D, device=dev, dtype=torch.bfloat16)
    q = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16)
    k = torch.randn(T, Hkv, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(T, Hkv, D, device=dev, dtype=torch.bfloat16)
    outs, caches = [], []
    for impl in (TorchAttention(H, Hkv, D, D**-0.5, None), TritonAttention(H, Hkv, D, D**-0.5, None)):
        impl.k_scale, impl.v_scale = ks, vs
        cache = (torch.zeros(160, bs, Hkv, D, dtype=FP8, device=dev), torch.zeros(160, bs, Hkv, D, dtype=FP8, device=dev))
        write_kv_cache(kc, vc, cache, ctx.slot_mapping, ks, vs)
        outs.append(impl.forward(q, k, v, cache, meta).float())
        caches.append(cache)
    # the Triton cache write quantizes exactly as the torch one (same e4m3 bytes)
    assert torch.equal(caches[0][0].view(torch.uint8), caches[1][0].view(torch.uint8))
    assert torch.equal(caches[0][1].view(torch.uint8), caches[1][1].view(torch.uint8))
    err = (outs[0] - outs[1]).abs().max() / outs[0].abs().max()
    assert err < 2e-2


def test_triton_kernels_over_an_fp8_cache_match_the_torch_backend_in_the_interpreter():
    """The Triton cache write (same e4m3 bytes) and paged attention (split and unsplit, per-tensor and
    per-head scales) in Triton's interpreter, in a fresh process (tests/kv_fp8_interpreter.py)."""
    from interpreter_run import run_interpreter_script

    results = run_interpreter_script("kv_fp8_interpreter.py")
    for name, r in results.items():
        assert r["same_cache_bytes"], name
        assert r["rel_err"] < 1e-5, (name, r["rel_err"])
