"""Backend choice at start-up, and every optional backend against the torch reference where it runs."""
from __future__ import annotations

import random

import pytest
import torch

from worker.attention import backend as backend_module
from worker.attention.backend import BackendUnusable, get_backend
from worker.attention.flash_attn_backend import flash_attn_available
from worker.attention.flashinfer_backend import block_tables_to_csr, flashinfer_available
from worker.attention.probe import AttentionShape, check_backend
from worker.attention.torch_backend import TorchAttention, TorchBackend, gather_kv
from worker.config import EngineConfig


def test_auto_picks_the_torch_reference_on_cpu():
    assert get_backend("auto", torch.device("cpu")).name == "torch"
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("nonsense", torch.device("cpu"))
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        EngineConfig(attention_backend="flash-infer")


def test_an_explicit_optional_backend_that_cannot_run_stops_start_up_with_the_reason():
    for name in ("flash_attn", "flashinfer"):
        with pytest.raises(BackendUnusable, match=f"{name}.*not installed, no CUDA device"):
            get_backend(name, torch.device("cpu"), block_size=256)


SHAPE = AttentionShape(num_heads=8, num_kv_heads=2, head_dim=32, dtype=torch.float32, block_size=16,
                       sliding_windows=(None, 24))


def test_the_self_check_passes_a_backend_that_matches_the_reference():
    assert check_backend(TorchBackend(), torch.device("cpu"), SHAPE) is None


class _IgnoresBlockTables(TorchAttention):
    """Reads blocks 0, 1, 2... instead of the request's own: right shapes, wrong numbers."""

    def forward(self, q, k, v, kv_cache, meta):
        tables = meta.block_tables
        meta.block_tables = torch.arange(tables.numel(), dtype=tables.dtype).view_as(tables)
        try:
            return super().forward(q, k, v, kv_cache, meta)
        finally:
            meta.block_tables = tables


class _Crashes(TorchAttention):
    def forward(self, q, k, v, kv_cache, meta):
        raise RuntimeError("no kernel image is available for execution on the device")


class _WindowBlind(TorchAttention):
    """Correct without a sliding window, wrong with one."""

    def __init__(self, num_heads, num_kv_heads, head_dim, scale, sliding_window):
        super().__init__(num_heads, num_kv_heads, head_dim, scale, None)


class _Backend:
    name = "broken"

    def __init__(self, impl):
        self.impl = impl

    def make_impl(self, num_heads, num_kv_heads, head_dim, scale, sliding_window=None):
        return self.impl(num_heads, num_kv_heads, head_dim, scale, sliding_window)


def test_the_self_check_names_what_a_broken_backend_gets_wrong():
    cpu = torch.device("cpu")
    assert "relative error" in check_backend(_Backend(_IgnoresBlockTables), cpu, SHAPE)
    assert check_backend(_Backend(_Crashes), cpu, SHAPE) == "RuntimeError: no kernel image is available for execution on the device"
    assert check_backend(_Backend(_WindowBlind), cpu, SHAPE).endswith("(sliding window 24)")


def test_an_explicit_optional_backend_failing_its_self_check_is_refused(monkeypatch):
    monkeypatch.setattr(backend_module, "_optional_backend", lambda name, device, block_size: _Backend(_IgnoresBlockTables))
    with pytest.raises(BackendUnusable, match="'flashinfer' cannot be used: relative error"):
        get_backend("flashinfer", torch.device("cpu"), 16, SHAPE)
    monkeypatch.setattr(backend_module, "_optional_backend", lambda name, device, block_size: TorchBackend())
    assert get_backend("flashinfer", torch.device("cpu"), 16, SHAPE).name == "torch"  # passed: used


def test_block_tables_become_flashinfer_csr_pages():
    rng = random.Random(1)
    bs, lens, starts = 16, [1, 16, 17, 40], [0, 1, 5, 22, 23]
    tables = torch.full((4, 5), -7, dtype=torch.int32)  # entries past a request's pages are junk
    free = list(range(20))
    rng.shuffle(free)
    for i, n in enumerate(lens):
        for j in range(-(-n // bs)):
            tables[i, j] = free.pop()
    qo_indptr, csr = block_tables_to_csr(tables, lens, starts, bs)
    assert qo_indptr.tolist() == starts and qo_indptr.dtype == torch.int32
    assert csr.indptr.tolist() == [0, 1, 2, 4, 7]
    assert csr.last_page_len.tolist() == [1, 16, 1, 8]
    assert csr.indices.dtype == torch.int32
    cache = torch.randn(20, bs, 2, 4)
    for i, n in enumerate(lens):
        pages = csr.indices[csr.indptr[i] : csr.indptr[i + 1]].long()
        rows = cache[pages].flatten(0, 1)[: (len(pages) - 1) * bs + int(csr.last_page_len[i])]
        assert torch.equal(rows, gather_kv((cache, cache), tables[i], n)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_auto_takes_triton_unless_an_optional_backend_is_installed_and_suits():
    dev = torch.device("cuda")
    shape = AttentionShape(32, 8, 128, torch.bfloat16, 16)
    expected = "flashinfer" if flashinfer_available() else "triton"
    assert get_backend("auto", dev, 16, shape).name == expected
    expected = "flash_attn" if flash_attn_available() else expected
    assert get_backend("auto", dev, 256, AttentionShape(32, 8, 128, torch.bfloat16, 256)).name == expected


@pytest.mark.gpu
@pytest.mark.skipif(not flashinfer_available(), reason="FlashInfer is not installed (optional fast path)")
@pytest.mark.parametrize("block_size", [16, 32])
def test_flashinfer_backend_matches_the_reference(block_size):
    shape = AttentionShape(32, 8, 128, torch.bfloat16, block_size, (None, 40))
    for seed in range(3):  # fresh random inputs each time
        assert check_backend(get_backend("flashinfer", torch.device("cuda")), torch.device("cuda"), shape, seed) is None


@pytest.mark.gpu
@pytest.mark.skipif(not flash_attn_available(), reason="flash-attn is not installed (optional fast path)")
def test_flash_attn_backend_matches_the_reference():
    # A prefill, a decode and a chunk after cached context, on scattered 256-token pages.
    shape = AttentionShape(32, 8, 128, torch.bfloat16, 256, (None, 300))
    for seed in range(3):  # fresh random inputs each time
        assert check_backend(get_backend("flash_attn", torch.device("cuda"), 256), torch.device("cuda"), shape, seed) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_self_check_passes_the_triton_kernel_on_the_gpu(dtype):
    # The check's tolerance must admit a correct kernel in half precision, or auto would never
    # take an optional backend at all.
    from worker.attention.triton_backend import TritonBackend

    shape = AttentionShape(32, 8, 128, dtype, 16, (None, 40))
    for seed in range(3):
        assert check_backend(TritonBackend(), torch.device("cuda"), shape, seed) is None


class _IgnoresSoftcap(_Backend):
    def make_impl(self, num_heads, num_kv_heads, head_dim, scale, sliding_window=None, logit_softcap=None):
        return self.impl(num_heads, num_kv_heads, head_dim, scale, sliding_window)


def test_the_self_check_refuses_a_backend_that_cannot_soft_cap():
    """Gemma 2 soft-caps attention scores: a backend without the option, or one that ignores it, fails."""
    import dataclasses

    cpu = torch.device("cpu")
    capped = dataclasses.replace(SHAPE, logit_softcap=0.5)
    assert check_backend(TorchBackend(), cpu, capped) is None
    assert "logit_softcap" in check_backend(_Backend(TorchAttention), cpu, capped)
    assert "relative error" in check_backend(_IgnoresSoftcap(TorchAttention), cpu, capped)
