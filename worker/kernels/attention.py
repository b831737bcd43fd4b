"""Paged attention over block tables for prefill, chunked prefill and decode in one launch.

``unified_attention`` checks shapes on the host, picks a tile shape and a split count from Python
ints, and launches ``paged_attention_kernel`` (plus ``merge_splits_kernel`` when the context is split).
It never reads a device tensor on the host, so it can be captured in a CUDA graph.
"""
from __future__ import annotations

import functools
import os

import torch

from worker.kernels.attention_config import (
    MAX_PIECES,
    choose_decode_pieces,
    choose_num_splits,
    choose_tile_config,
    decode_piece_policy,
    next_power_of_2,
)
from worker.kernels.attention_kernels import merge_splits_kernel, paged_attention_kernel
from worker.kernels.errors import KernelInputError
from worker.kernels.pdl import launch_options, use_pdl

# Stands in for the SM count off-GPU (Triton's interpreter), so split decisions stay testable there.
INTERPRETER_NUM_SMS = 4
# Pieces for decode steps that fill the card: off unless WARD_DECODE_PIECES asks (attention_config).
DECODE_PIECES = decode_piece_policy(os.environ.get("WARD_DECODE_PIECES", "0"))
LOG2_E = 1.4426950408889634
_INDEX_DTYPES = (torch.int32, torch.int64)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.lru_cache(maxsize=None)
def _cuda_num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a fixed stand-in off CUDA)."""
    if device.type != "cuda":
        return INTERPRETER_NUM_SMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_num_sms(index)


def split_plan(
    q_programs: int,
    num_kv_heads: int,
    max_seq_len: int,
    tile_n: int,
    single_block: bool,
    sms: int,
    num_splits: int | None = None,
    split_tokens: int | None = None,
) -> tuple[int, int]:
    """(KV partitions, tiles per piece; 0 for equal splits) of a launch, from host ints only.

    ``num_splits`` / ``split_tokens`` as in ``unified_attention``; with neither, the pieces policy
    (``WARD_DECODE_PIECES``) for decode grids that fill the card, else ``choose_num_splits``."""
    if split_tokens is None and num_splits is None and single_block and DECODE_PIECES is not None:
        if q_programs * num_kv_heads >= sms:  # below, the equal splits of choose_num_splits fill the card
            most = choose_decode_pieces(q_programs * num_kv_heads, sms, DECODE_PIECES[1])
            if most > 1:
                split_tokens, num_splits = DECODE_PIECES[0], most
    if split_tokens is not None:
        split_tiles = -(-split_tokens // tile_n)
        most = num_splits if num_splits is not None else MAX_PIECES
        return max(1, min(most, -(-max_seq_len // (split_tiles * tile_n)))), split_tiles
    if num_splits is None:
        return choose_num_splits(q_programs * num_kv_heads, max_seq_len, sms), 0
    return num_splits, 0


def decode_split_plan(
    num_reqs: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    kv_element_size: int,
    max_seq_len: int,
    device: torch.device,
    num_splits: int | None = None,
) -> tuple[int, int]:
    """``split_plan`` of a decode step (one query a request) of ``num_reqs`` requests whose contexts are
    at most ``max_seq_len`` tokens: what ``unified_attention`` will launch for it. Two bounds with the
    same plan launch the same kernels, so one CUDA graph serves both (worker.runner.cuda_graphs)."""
    config = choose_tile_config(1, num_heads // num_kv_heads, head_dim, kv_element_size)
    return split_plan(num_reqs, num_kv_heads, max_seq_len, config.tile_n, True, num_sms(device), num_splits)


def unified_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    out: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    sliding_window: int | None = None,
    *,
    num_reqs: int | None = None,
    num_splits: int | None = None,
    split_tokens: int | None = None,
    request_order: torch.Tensor | None = None,
    logit_softcap: float | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of every request's queries over its paged context; writes and returns ``out``.

    Shapes (T = rows of q, possibly with graph padding at the end):
      q, out           [T, Hq, D], float16/bfloat16/float32, last dim contiguous
      key/value_cache  [num_blocks, block_size, Hkv, D], last dim contiguous, Hq % Hkv == 0
      query_start_loc  [num_reqs + 1] int32/int64: request i owns rows query_start_loc[i]:[i+1]
      seq_lens         [num_reqs] int32/int64: context + this step's queries of request i
      block_tables     [num_reqs, max_blocks] int32/int64: physical block of each logical block
    Query j of request i sits at position ``seq_lens[i] - q_len_i + j`` and sees keys at positions
    <= its own, and with ``sliding_window`` only the last ``sliding_window`` of them (itself included).
    The step's K/V must already be in the cache (``reshape_and_cache``). Rows of requests with
    ``seq_len == 0`` (padding requests) are written as zeros; rows past ``query_start_loc[num_reqs]``
    are left untouched.

    ``max_query_len`` and ``max_seq_len`` are host ints that steer the launch shape only.
    ``max_query_len`` must bound every request's query count (it may select the one-program-per-request
    grid); ``max_seq_len`` only feeds the split heuristic, so any upper bound is correct (under CUDA
    graphs, pass the bound the graph must serve). ``num_reqs`` defaults to ``seq_lens.shape[0]``;
    ``num_splits`` forces a split count (1 disables split-KV), otherwise a heuristic picks one.
    ``split_tokens`` instead cuts each request's context into pieces of about that many tokens (whole
    tiles), as many as its own length needs and at most ``num_splits`` (default ``MAX_PIECES``; longer
    contexts get longer pieces): programs get even work whatever the spread of lengths, and pieces
    past a request's end exit at once.
    ``request_order`` (int32 [num_reqs], a permutation; decode-like steps only) is the order in which
    programs take requests; longest first evens out the card's last wave.
    ``logit_softcap`` (Gemma 2) caps scores at cap * tanh(score / cap) before the mask.
    An e4m3 cache (float8_e4m3fn) is read with float32 ``k_scale`` / ``v_scale`` of [1] or [Hkv]
    (a cached value stands for ``value * scale``).
    """
    num_reqs = seq_lens.shape[0] if num_reqs is None else num_reqs
    _check_inputs(q, key_cache, value_cache, out, query_start_loc, seq_lens, block_tables, num_reqs)
    if sliding_window is not None and sliding_window < 1:
        raise KernelInputError(f"sliding_window must be >= 1 or None, got {sliding_window}")
    if num_splits is not None and num_splits < 1:
        raise KernelInputError(f"num_splits must be >= 1, got {num_splits}")
    if split_tokens is not None and split_tokens < 1:
        raise KernelInputError(f"split_tokens must be >= 1, got {split_tokens}")
    if request_order is not None and (request_order.dtype not in _INDEX_DTYPES or request_order.device != q.device
                                      or request_order.dim() != 1 or request_order.shape[0] < num_reqs):
        raise KernelInputError(f"request_order must be an int32/int64 vector of >= {num_reqs} on {q.device}")
    if logit_softcap is not None and not logit_softcap > 0:
        raise KernelInputError(f"logit_softcap must be > 0 or None, got {logit_softcap}")
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, block_size = key_cache.shape[2], key_cache.shape[1]
    kv_fp8 = key_cache.dtype == torch.float8_e4m3fn
    if kv_fp8 and (k_scale is None or v_scale is None or k_scale.numel() not in (1, num_kv_heads)
                   or v_scale.numel() != k_scale.numel()):
        raise KernelInputError(f"an fp8 cache needs k_scale and v_scale of 1 or {num_kv_heads} values")
    if num_tokens == 0 or num_reqs == 0:
        return out
    group = num_heads // num_kv_heads

    config = choose_tile_config(max_query_len, group, head_dim, key_cache.element_size())
    single_block = max_query_len <= config.block_q
    q_programs = num_reqs if single_block else num_tokens // config.block_q + num_reqs
    num_splits, split_tiles = split_plan(q_programs, num_kv_heads, max_seq_len, config.tile_n, single_block,
                                         num_sms(q.device), num_splits, split_tokens)
    split = num_splits > 1
    use_order = request_order is not None and single_block

    if split:
        part_out = torch.empty((num_tokens, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        part_max = torch.empty((num_tokens, num_heads, num_splits), dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
        part_strides = (*part_out.stride()[:3], *part_max.stride()[:2])
    else:
        part_out = part_max = part_sum = out  # unused by the kernel without SPLIT
        part_strides = (0, 0, 0, 0, 0)

    head_dim_p = next_power_of_2(head_dim)
    pdl = use_pdl(q.device)
    paged_attention_kernel[(q_programs, num_kv_heads, num_splits)](
        q,
        key_cache,
        value_cache,
        out,
        part_out,
        part_max,
        part_sum,
        query_start_loc,
        seq_lens,
        block_tables,
        k_scale if kv_fp8 else seq_lens,
        v_scale if kv_fp8 else seq_lens,
        request_order if use_order else seq_lens,
        num_reqs,
        num_splits,
        split_tiles,
        scale * LOG2_E if logit_softcap is None else scale / logit_softcap,
        0.0 if logit_softcap is None else logit_softcap * LOG2_E,
        sliding_window or 0,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        *key_cache.stride()[:3],
        *value_cache.stride()[:3],
        block_tables.stride(0),
        *part_strides,
        HEAD_DIM=head_dim,
        HEAD_DIM_P=head_dim_p,
        GROUP=group,
        GROUP_P=next_power_of_2(group),
        BLOCK_M=config.block_m,
        BLOCK_Q=config.block_q,
        TILE_N=config.tile_n,
        PAGE_SIZE=block_size,
        SINGLE_BLOCK_PER_REQ=single_block,
        USE_WINDOW=sliding_window is not None,
        SPLIT=split,
        EXACT_FP32=q.dtype == torch.float32,
        USE_SOFTCAP=logit_softcap is not None,
        KV_FP8=kv_fp8,
        SCALE_STRIDE=int(kv_fp8 and k_scale.numel() > 1),
        USE_ORDER=use_order,
        USE_PDL=pdl,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **launch_options(pdl),
    )
    if split:
        merge_splits_kernel[(num_tokens, num_heads)](
            out,
            part_out,
            part_max,
            part_sum,
            query_start_loc,
            num_reqs,
            num_splits,
            out.stride(0),
            out.stride(1),
            *part_strides,
            HEAD_DIM=head_dim,
            HEAD_DIM_P=head_dim_p,
            SPLITS_P=next_power_of_2(num_splits),
            USE_PDL=pdl,
            num_warps=4 if head_dim_p * next_power_of_2(num_splits) >= 4096 else 2,
            **launch_options(pdl),
        )
    return out


def _check_inputs(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    out: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    num_reqs: int,
) -> None:
    if q.dim() != 3:
        raise KernelInputError(f"q must be [T, Hq, D], got shape {tuple(q.shape)}")
    if q.dtype not in _FLOAT_DTYPES or key_cache.dtype not in (*_FLOAT_DTYPES, torch.float8_e4m3fn):
        raise KernelInputError(f"q and caches must be float16, bfloat16 or float32, got {q.dtype}, {key_cache.dtype}")
    if out.shape != q.shape:
        raise KernelInputError(f"out shape {tuple(out.shape)} differs from q shape {tuple(q.shape)}")
    if key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
        raise KernelInputError(
            f"key/value caches must both be [num_blocks, block_size, Hkv, D], got {tuple(key_cache.shape)} "
            f"and {tuple(value_cache.shape)}"
        )
    if key_cache.shape[3] != q.shape[2]:
        raise KernelInputError(f"cache head_dim {key_cache.shape[3]} differs from q head_dim {q.shape[2]}")
    if q.shape[1] % key_cache.shape[2]:
        raise KernelInputError(f"Hq {q.shape[1]} is not a multiple of Hkv {key_cache.shape[2]}")
    for name, tensor in (("q", q), ("out", out), ("key_cache", key_cache), ("value_cache", value_cache)):
        if tensor.stride(-1) != 1:
            raise KernelInputError(f"{name} must have a contiguous last dimension")
        if tensor.device != q.device:
            raise KernelInputError(f"{name} is on {tensor.device}, q on {q.device}")
    for name, tensor in (("query_start_loc", query_start_loc), ("seq_lens", seq_lens), ("block_tables", block_tables)):
        if tensor.dtype not in _INDEX_DTYPES:
            raise KernelInputError(f"{name} must be int32 or int64, got {tensor.dtype}")
        if tensor.device != q.device:
            raise KernelInputError(f"{name} is on {tensor.device}, q on {q.device}")
    if query_start_loc.dim() != 1 or query_start_loc.shape[0] < num_reqs + 1:
        raise KernelInputError(f"query_start_loc needs num_reqs + 1 = {num_reqs + 1} entries")
    if seq_lens.dim() != 1 or seq_lens.shape[0] < num_reqs:
        raise KernelInputError(f"seq_lens needs num_reqs = {num_reqs} entries")
    if block_tables.dim() != 2 or block_tables.shape[0] < num_reqs or block_tables.stride(1) != 1:
        raise KernelInputError(f"block_tables must be [>= {num_reqs}, max_blocks] with contiguous rows")
    if query_start_loc.stride(0) != 1 or seq_lens.stride(0) != 1:
        raise KernelInputError("query_start_loc and seq_lens must be contiguous")
