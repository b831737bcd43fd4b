"""The attention contract shared by every backend.

Tokens of all requests in a step are laid out flat: request i owns query rows
``query_start_loc[i]:query_start_loc[i+1]``. Its cached context (tokens computed in earlier steps,
or found in the prefix cache) has ``seq_lens[i] - query_len_i`` tokens; queries are causal with that
offset, so the same call serves prefill, chunked prefill and decode.

The paged KV cache of one layer is a pair ``(key_cache, value_cache)``, each
``[num_blocks, block_size, num_kv_heads, head_dim]`` (layers of different KV groups may share a
pair: each group has its own block tables and slot mapping, ``AttentionMetadata.for_group``). Token t of the step is written at flat slot
``slot_mapping[t]`` (= block_id * block_size + offset); a negative slot marks a padding token that
must not be written.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from worker.config import BACKEND_NAMES
from worker.errors import BackendUnusable

log = logging.getLogger("ward.worker.attention")


@dataclass
class AttentionMetadata:
    """Flat per-step tensors, built once per step by the model runner and shared by every layer."""

    num_tokens: int  # rows of q that belong to real requests (graph padding may add more)
    num_reqs: int
    query_start_loc: torch.Tensor  # int32 [num_reqs + 1]
    seq_lens: torch.Tensor  # int32 [num_reqs], context + this step's tokens
    block_tables: torch.Tensor  # int32 [num_reqs, max_blocks_per_req]
    slot_mapping: torch.Tensor  # int64 [num_tokens (+ padding)], -1 for padding
    max_query_len: int
    max_seq_len: int
    # Host copies, for backends that loop or size grids on the CPU side (never read back from the device).
    query_start_loc_cpu: list[int] | None = None
    seq_lens_cpu: list[int] | None = None
    # Models with several KV groups (worker.engine.kv_layout): this is group 0's; ``groups`` holds
    # groups 1.. (each its own block tables and slot mapping, the rest shared).
    kv_group: int = 0
    groups: tuple["AttentionMetadata", ...] = ()
    # Decode steps: the requests longest first (int32 [num_reqs], a permutation), the order in which
    # attention programs take them so the card's last wave holds the shortest.
    request_order: torch.Tensor | None = None

    @property
    def is_pure_decode(self) -> bool:
        return self.max_query_len == 1

    def for_group(self, group: int) -> "AttentionMetadata":
        """The metadata a layer of KV group ``group`` reads."""
        return self.groups[group - 1] if group else self


class AttentionImpl(Protocol):
    """One layer's attention: writes this step's K/V into the cache, then attends over it."""

    def forward(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,  # [T, num_kv_heads, head_dim]
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        ...


class AttentionBackend(Protocol):
    name: str

    def make_impl(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        sliding_window: int | None = None,
    ) -> AttentionImpl: ...


OPTIONAL_BACKENDS = ("flash_attn", "flashinfer")  # from packages Ward does not pin: self-checked


def _optional_backend(name: str, device: torch.device, block_size: int) -> AttentionBackend | None:
    """The optional backend ``name`` if its package imports and suits the block size, else None."""
    if device.type != "cuda":
        return None
    if name == "flash_attn":
        from worker.attention.flash_attn_backend import PAGE_MULTIPLE, FlashAttnBackend, flash_attn_available

        return FlashAttnBackend() if block_size % PAGE_MULTIPLE == 0 and flash_attn_available() else None
    from worker.attention.flashinfer_backend import FlashInferBackend, flashinfer_available

    return FlashInferBackend(device) if flashinfer_available() else None


def get_backend(name: str, device: torch.device, block_size: int = 16, shape=None) -> AttentionBackend:
    """Pick a backend by name; ``auto`` takes the fastest one that works on the device and block
    size: flash-attn where it is installed and the block size suits it, then FlashInfer where it
    is installed, else Triton on CUDA, else the torch reference.

    With ``shape`` (a ``worker.attention.probe.AttentionShape``), an optional backend is used only
    after it matched the torch reference on one mixed step at that shape: ``auto`` moves on to the
    next candidate, an explicit choice raises ``BackendUnusable`` naming the problem.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown attention backend {name!r} (choose {', '.join(BACKEND_NAMES)})")
    if name == "auto" and device.type != "cuda":
        name = "torch"
    if name == "auto" or name in OPTIONAL_BACKENDS:
        candidates = OPTIONAL_BACKENDS if name == "auto" else (name,)
        for candidate in candidates:
            backend = _optional_backend(candidate, device, block_size)
            problem = None if backend is not None else "not installed, no CUDA device, or the block size does not suit it"
            if backend is not None and shape is not None:
                from worker.attention.probe import check_backend

                problem = check_backend(backend, device, shape)
            if problem is None:
                return backend
            if name != "auto":
                raise BackendUnusable(f"attention backend {candidate!r} cannot be used: {problem}")
            if backend is not None:
                log.warning("attention backend %s failed its start-up self-check (%s); not using it", candidate, problem)
        name = "triton"
    if name == "torch":
        from worker.attention.torch_backend import TorchBackend

        return TorchBackend()
    from worker.attention.triton_backend import TritonBackend

    return TritonBackend()
