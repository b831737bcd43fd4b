"""FlashInfer as an optional attention backend (used when the package is importable).

FlashInfer reads the same paged layout Ward keeps (``NHD``: ``[num_pages, page_size, num_kv_heads,
head_dim]`` per K and V), described per step in its CSR form: the pages of request i are
``indices[indptr[i]:indptr[i+1]]`` and its last page holds ``last_page_len[i]`` tokens. Its causal
mask is aligned to the end of each sequence, which is the attention contract's context offset, so
one prefill wrapper serves prefill, chunked prefill and mixed steps.

Pure decode steps go to the Triton kernel instead: those are the steps captured in CUDA graphs,
and FlashInfer's wrappers plan on the host per step, which a replayed graph cannot do. K/V are
written with Ward's cache kernel in both cases, so the cache is the same whichever kernel reads it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.attention.backend import AttentionMetadata
from worker.attention.triton_backend import TritonAttention

WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's own examples use 128 MiB for split-KV scratch


def flashinfer_available() -> bool:
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@dataclass
class PagedCsr:
    """One step's block tables in FlashInfer's CSR form."""

    indptr: torch.Tensor  # int32 [num_reqs + 1], host
    indices: torch.Tensor  # int32 [total pages], on the cache's device
    last_page_len: torch.Tensor  # int32 [num_reqs], host


def block_tables_to_csr(
    block_tables: torch.Tensor, seq_lens: list[int], query_start_loc: list[int], page_size: int
) -> tuple[torch.Tensor, PagedCsr]:
    """The step's query offsets (host int32) and its pages as CSR.

    Sizes come from the host copies of the step's lengths, so nothing here waits for the device:
    the one device-side operation is a gather of the used block-table entries.
    """
    num_reqs = len(seq_lens)
    pages = [-(-n // page_size) for n in seq_lens]
    indptr = torch.zeros(num_reqs + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.tensor(pages, dtype=torch.int32), 0)
    width = block_tables.shape[1]
    flat = torch.cat([torch.arange(p, dtype=torch.int64) + i * width for i, p in enumerate(pages)])
    indices = block_tables[:num_reqs].reshape(-1)[flat.to(block_tables.device, non_blocking=True)]
    last = torch.tensor([n - (p - 1) * page_size for n, p in zip(seq_lens, pages)], dtype=torch.int32)
    qo_indptr = torch.tensor(query_start_loc[: num_reqs + 1], dtype=torch.int32)
    return qo_indptr, PagedCsr(indptr, indices.to(torch.int32), last)


class FlashInferPlanner:
    """One prefill wrapper per sliding window and KV group, planned once per step and shared by its layers."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.wrappers: dict[tuple[int, int], object] = {}
        self.planned: dict[tuple[int, int], AttentionMetadata] = {}

    def wrapper_for(
        self, meta: AttentionMetadata, window_left: int, num_heads: int, num_kv_heads: int, head_dim: int,
        scale: float, q_dtype: torch.dtype, key_cache: torch.Tensor,
    ):
        import flashinfer

        key = (window_left, meta.kv_group)  # each KV group has its own block tables
        wrapper = self.wrappers.get(key)
        if wrapper is None:
            wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
            self.wrappers[key] = wrapper
        if self.planned.get(key) is not meta:  # the first layer of a step plans for all
            if meta.seq_lens_cpu is None or meta.query_start_loc_cpu is None:
                raise ValueError("the FlashInfer backend needs the step's host-side lengths")
            qo_indptr, csr = block_tables_to_csr(
                meta.block_tables, meta.seq_lens_cpu, meta.query_start_loc_cpu, key_cache.shape[1]
            )
            wrapper.plan(
                qo_indptr, csr.indptr, csr.indices, csr.last_page_len,
                num_heads, num_kv_heads, head_dim, key_cache.shape[1],
                causal=True, sm_scale=scale, window_left=window_left,
                q_data_type=q_dtype, kv_data_type=key_cache.dtype,
            )
            self.planned[key] = meta
        return wrapper


class FlashInferAttention:
    def __init__(
        self, planner: FlashInferPlanner, num_heads: int, num_kv_heads: int, head_dim: int, scale: float,
        sliding_window: int | None,
    ) -> None:
        self.planner = planner
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        # FlashInfer's window_left counts keys before the query: a window of w tokens is w - 1.
        self.window_left = sliding_window - 1 if sliding_window else -1
        self.decode = TritonAttention(num_heads, num_kv_heads, head_dim, scale, sliding_window)

    def forward(self, q, k, v, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        if meta.is_pure_decode:
            return self.decode.forward(q, k, v, kv_cache, meta)
        from worker.kernels.kv_cache import reshape_and_cache

        key_cache, value_cache = kv_cache
        reshape_and_cache(k, v, key_cache, value_cache, meta.slot_mapping)
        wrapper = self.planner.wrapper_for(
            meta, self.window_left, self.num_heads, self.num_kv_heads, self.head_dim, self.scale, q.dtype, key_cache
        )
        T = meta.num_tokens
        out = torch.empty_like(q)
        if q.shape[0] > T:
            out[T:].zero_()  # graph padding rows only: zeroing a whole prefill step is memory traffic for nothing
        out[:T] = wrapper.run(q[:T].contiguous(), (key_cache, value_cache))
        return out


class FlashInferBackend:
    name = "flashinfer"

    def __init__(self, device: torch.device) -> None:
        self.planner = FlashInferPlanner(device)

    def make_impl(self, num_heads, num_kv_heads, head_dim, scale, sliding_window=None) -> FlashInferAttention:
        return FlashInferAttention(self.planner, num_heads, num_kv_heads, head_dim, scale, sliding_window)
