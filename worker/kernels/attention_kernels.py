"""Triton programs of paged attention: the attention kernel and the split-KV merge.

Call them through ``worker.kernels.attention.unified_attention``, which checks inputs and picks the
launch shape. Layouts (last dimension contiguous everywhere):
  q, out        [T, Hq, D]
  K/V cache     [num_blocks, PAGE_SIZE, Hkv, D]
  block_tables  [num_reqs, max_blocks] int32
  partials      out [T, Hq, S, D] fp32, max and sum [T, Hq, S] fp32 (split-KV only)
Softmax runs in base 2: scores are multiplied by ``scale * log2(e)`` so ``exp2`` replaces ``exp``.
With soft-capping (Gemma 2) scores become cap * tanh(scale * qk / cap): the kernel is passed
``scale / cap`` and ``cap * log2(e)`` instead.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _find_request(query_start_loc_ptr, num_reqs, program, BLOCK_Q: tl.constexpr):
    """Index of the request owning query-block ``program``.

    Request i's query blocks start at ``query_start_loc[i] // BLOCK_Q + i``: that over-counts by at
    most one block per request, so a grid of ``T // BLOCK_Q + num_reqs`` programs covers every block
    and each program belongs to exactly one request (surplus programs find no queries and exit).
    """
    lo = program * 0
    hi = lo + num_reqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        go_right = first_block <= program
        lo = tl.where(go_right, mid + 1, lo)
        hi = tl.where(go_right, hi, mid)
    return lo - 1


@triton.jit
def _tanh(x):
    # tanh from one exp of a non-positive argument: no overflow, exact sign
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit(do_not_specialize=["num_reqs", "num_splits", "split_tiles", "sliding_window"])
def paged_attention_kernel(
    q_ptr,
    key_cache_ptr,
    value_cache_ptr,
    out_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    k_scale_ptr,
    v_scale_ptr,
    order_ptr,
    num_reqs,
    num_splits,
    split_tiles,
    qk_scale_log2,
    softcap_log2,
    sliding_window,
    stride_q_tok,
    stride_q_head,
    stride_o_tok,
    stride_o_head,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_bt_req,
    stride_p_tok,
    stride_p_head,
    stride_p_split,
    stride_stat_tok,
    stride_stat_head,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_P: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    TILE_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    SINGLE_BLOCK_PER_REQ: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    SPLIT: tl.constexpr,
    EXACT_FP32: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    KV_FP8: tl.constexpr = False,
    SCALE_STRIDE: tl.constexpr = 0,
    USE_ORDER: tl.constexpr = False,
    USE_PDL: tl.constexpr = False,
):
    """One program: BLOCK_Q queries of one request x the GROUP query heads of one KV head.

    Grid: (query programs, num_kv_heads, num_splits). Rows of the Q tile are (query, head-in-group)
    pairs, so each K/V tile is loaded once for the whole group. Without SPLIT the program writes the
    normalised output; with SPLIT it covers one slice of the context tiles and writes its unnormalised
    accumulator, running max and running sum for ``merge_splits_kernel``. The request's tiles are cut
    into ``num_splits`` equal slices, or with ``split_tiles`` > 0 into as many slices of about
    ``split_tiles`` tiles as its own length needs (at most ``num_splits``); a split past the request's
    slices writes only its empty statistics.
    With ``USE_ORDER`` (one block per request), program i serves request ``order[i]``: the host
    passes the requests longest first, so the last programs the card starts are the shortest.
    With ``USE_PDL`` the program first waits for the kernel before it (pdl.py).
    """
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    program = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    if SINGLE_BLOCK_PER_REQ:
        # Every request's queries fit in one block: program i is request i, no search needed.
        if USE_ORDER:
            req = tl.load(order_ptr + program)
        else:
            req = program
        q_block = program * 0
    else:
        req = _find_request(query_start_loc_ptr, num_reqs, program, BLOCK_Q)
        q_block = program - (tl.load(query_start_loc_ptr + req) // BLOCK_Q + req)

    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    if q_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)
    context_len = seq_len - q_len  # queries sit at positions context_len .. seq_len - 1

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_P)
    d_valid = offs_d < HEAD_DIM
    q_index = q_block * BLOCK_Q + offs_m // GROUP_P  # query index within the request
    head_in_group = offs_m % GROUP_P
    q_head = kv_head * GROUP + head_in_group
    row_valid = (q_index < q_len) & (head_in_group < GROUP)
    q_pos = context_len + q_index
    token = (q_start + q_index).to(tl.int64)

    q = tl.load(
        q_ptr + token[:, None] * stride_q_tok + q_head[:, None] * stride_q_head + offs_d[None, :],
        mask=row_valid[:, None] & d_valid[None, :],
        other=0.0,
    )

    # Context tiles this block needs: up to its last query (causal), from its window's start.
    last_q_index = tl.minimum(q_len, (q_block + 1) * BLOCK_Q) - 1
    kv_end = context_len + last_q_index + 1
    kv_start = kv_end * 0
    if USE_WINDOW:
        kv_start = tl.maximum(context_len + q_block * BLOCK_Q - sliding_window + 1, 0)
    tile_lo = kv_start // TILE_N
    tile_hi = (kv_end + TILE_N - 1) // TILE_N
    if SPLIT:
        parts = num_splits
        if split_tiles > 0:  # pieces of split_tiles tiles, at most num_splits of them
            parts = tl.maximum(tl.minimum(num_splits, (tile_hi - tile_lo + split_tiles - 1) // split_tiles), 1)
        tiles_per_split = (tile_hi - tile_lo + parts - 1) // parts
        tile_lo = tile_lo + split * tiles_per_split
        tile_hi = tl.minimum(tile_hi, tile_lo + tiles_per_split)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_P], dtype=tl.float32)
    block_table = block_tables_ptr + req.to(tl.int64) * stride_bt_req
    k_head = key_cache_ptr + kv_head * stride_k_head
    v_head = value_cache_ptr + kv_head * stride_v_head
    if KV_FP8:  # e4m3 cache: scores scale by k_scale, the output by v_scale (both per KV head)
        k_scale = tl.load(k_scale_ptr + kv_head * SCALE_STRIDE)
        v_scale = tl.load(v_scale_ptr + kv_head * SCALE_STRIDE)

    for tile in range(tile_lo, tile_hi):
        offs_n = tile * TILE_N + tl.arange(0, TILE_N)
        n_valid = offs_n < kv_end
        if USE_WINDOW:
            # never load keys before the window: their blocks may have been given back and reused
            n_valid = n_valid & (offs_n >= kv_start)
        page = tl.load(block_table + offs_n // PAGE_SIZE, mask=n_valid, other=0).to(tl.int64)
        slot = offs_n % PAGE_SIZE
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(
            k_head + page[:, None] * stride_k_block + slot[:, None] * stride_k_slot + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        ).to(q.dtype)
        if EXACT_FP32:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        if KV_FP8:
            s = s * (qk_scale_log2 * k_scale)
        else:
            s = s * qk_scale_log2
        if USE_SOFTCAP:
            s = _tanh(s) * softcap_log2
        allowed = n_valid[None, :] & (offs_n[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            allowed = allowed & (offs_n[None, :] > q_pos[:, None] - sliding_window)
        s = tl.where(allowed, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with nothing allowed yet keeps max -inf; shift it by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)

        v = tl.load(
            v_head + page[:, None] * stride_v_block + slot[:, None] * stride_v_slot + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        ).to(q.dtype)
        if EXACT_FP32:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    if KV_FP8:
        acc = acc * v_scale
    if SPLIT:
        # An empty split leaves its accumulator unwritten: the merge skips splits whose max is -inf.
        part = token[:, None] * stride_p_tok + q_head[:, None] * stride_p_head + split * stride_p_split
        filled = row_valid & (offs_m * 0 + tile_hi > tile_lo)
        tl.store(part_out_ptr + part + offs_d[None, :], acc, mask=filled[:, None] & d_valid[None, :])
        stat = token * stride_stat_tok + q_head * stride_stat_head + split
        tl.store(part_max_ptr + stat, m_i, mask=row_valid)
        tl.store(part_sum_ptr + stat, l_i, mask=row_valid)
    else:
        # A row that saw no key (a padding request with seq_len 0) writes zeros.
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(
            out_ptr + token[:, None] * stride_o_tok + q_head[:, None] * stride_o_head + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_valid[:, None] & d_valid[None, :],
        )


@triton.jit(do_not_specialize=["num_reqs", "num_splits"])
def merge_splits_kernel(
    out_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    query_start_loc_ptr,
    num_reqs,
    num_splits,
    stride_o_tok,
    stride_o_head,
    stride_p_tok,
    stride_p_head,
    stride_p_split,
    stride_stat_tok,
    stride_stat_head,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_P: tl.constexpr,
    SPLITS_P: tl.constexpr,
    USE_PDL: tl.constexpr = False,
):
    """Merge the split partials of one (token, query head) into the normalised output.

    Grid: (T, Hq). Tokens past ``query_start_loc[num_reqs]`` belong to no request and are left alone.
    """
    if USE_PDL:  # the partials come from the attention kernel (pdl.py)
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    token = tl.program_id(0)
    head = tl.program_id(1)
    if token >= tl.load(query_start_loc_ptr + num_reqs):
        return
    offs_s = tl.arange(0, SPLITS_P)
    offs_d = tl.arange(0, HEAD_DIM_P)
    s_valid = offs_s < num_splits
    d_valid = offs_d < HEAD_DIM
    token64 = token.to(tl.int64)
    base = token64 * stride_p_tok + head * stride_p_head
    stat = token64 * stride_stat_tok + head * stride_stat_head + offs_s
    m = tl.load(part_max_ptr + stat, mask=s_valid, other=float("-inf"))
    l = tl.load(part_sum_ptr + stat, mask=s_valid, other=0.0)
    m_max = tl.max(m, axis=0)
    weight = tl.math.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # empty split -> 0
    denom = tl.sum(weight * l, axis=0)
    acc = tl.load(
        part_out_ptr + base + offs_s[:, None] * stride_p_split + offs_d[None, :],
        mask=(s_valid & (m > float("-inf")))[:, None] & d_valid[None, :],
        other=0.0,
    )
    out = tl.sum(acc * weight[:, None], axis=0) / tl.where(denom == 0.0, 1.0, denom)
    tl.store(
        out_ptr + token64 * stride_o_tok + head * stride_o_head + offs_d,
        out.to(out_ptr.dtype.element_ty),
        mask=d_valid,
    )
