"""Launch decisions for paged attention, made on the host from Python ints only.

Nothing here reads a device tensor, so the choices are free under CUDA-graph capture. The choices
change speed, never results: every tile shape and split count computes the same attention.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# Below this many rows a tensor-core dot is not allowed (M, N and K must be at least 16).
MIN_DOT_ROWS = 16
# Split-KV aims for about this many programs per SM, so that a wave's tail does not idle the card.
TARGET_PROGRAMS_PER_SM = 2
# A split shorter than this spends more on writing and merging partial results than it saves.
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 64
# Opt-in (WARD_DECODE_PIECES, worker/kernels/attention.py): decode steps whose grid already fills the
# card cut into pieces of at least PIECE_TOKENS context tokens (``split_tokens``), as many per request
# as bring the grid to about PIECE_PROGRAMS_PER_SM programs per SM (at most MAX_PIECES), so that with
# lengths that differ a whole long context in one program does not finish last.
PIECE_TOKENS = 256
PIECE_PROGRAMS_PER_SM = 16
MAX_PIECES = 16


def decode_tile(value: str) -> tuple[int, int, int]:
    """WARD_DECODE_TILE as (tile tokens, warps, stages); ValueError for anything else."""
    parts = value.split(":")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"WARD_DECODE_TILE must be TOKENS:WARPS:STAGES (e.g. 64:4:3), got {value!r}")
    tile_n, warps, stages = (int(p) for p in parts)
    return tile_n, warps, stages


# Decode tiles: 64 tokens, 4 warps, 3 stages (H100: 8% less time than 32-token tiles at batch 256,
# bench/attention_splits.py); WARD_DECODE_TILE=32:4:3 sets another shape (A/B timing).
DECODE_TILE = decode_tile(os.environ.get("WARD_DECODE_TILE", "64:4:3"))


def prefill_tile(value: str) -> tuple[int, int, int, int] | None:
    """WARD_PREFILL_TILE as (rows, tile tokens, warps, stages), or None when unset (the built-in
    shapes); ValueError unless four positive ints with rows and tokens powers of two, rows >= 16."""
    if not value:
        return None
    parts = value.split(":")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"WARD_PREFILL_TILE must be ROWS:TOKENS:WARPS:STAGES (e.g. 128:64:8:2), got {value!r}")
    rows, tile_n, warps, stages = (int(p) for p in parts)
    if rows < MIN_DOT_ROWS or rows & (rows - 1) or tile_n < 16 or tile_n & (tile_n - 1):
        raise ValueError(f"WARD_PREFILL_TILE rows (>= 16) and tokens (>= 16) must be powers of two, got {value!r}")
    return rows, tile_n, warps, stages


# Prefill tiles (query runs longer than 64 rows): built in below, or WARD_PREFILL_TILE for A/B timing
# on a card (bench/prefill_attention.py sweeps them).
PREFILL_TILE = prefill_tile(os.environ.get("WARD_PREFILL_TILE", ""))


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def prev_power_of_2(n: int) -> int:
    """Largest power of two <= n (n must be >= 1)."""
    return 1 << (n.bit_length() - 1)


@dataclass(frozen=True)
class AttentionTileConfig:
    """One compiled shape of the attention kernel.

    A program owns ``block_q`` consecutive queries of one request times the ``group_p`` query heads of
    one KV head (``block_m = block_q * group_p`` rows), and walks the context ``tile_n`` tokens at a time.
    """

    block_m: int
    block_q: int
    tile_n: int
    num_warps: int
    num_stages: int


def choose_tile_config(
    max_query_len: int, group_size: int, head_dim: int, element_size: int = 2
) -> AttentionTileConfig:
    """Pick the tile shape from the step's longest query run, the GQA group and the K/V element size.

    Decode-like steps (every request's queries fit in one 16-row tile with its whole group) take the
    smallest tile: the work is memory-bound and small tiles give more programs. Longer query runs take
    64 or 128 rows so each loaded K/V tile feeds more tensor-core work.
    """
    group_p = next_power_of_2(group_size)
    decode_rows = max(MIN_DOT_ROWS, group_p)
    rows_needed = max(1, max_query_len) * group_p
    if rows_needed <= decode_rows:
        tile_n, warps, stages = DECODE_TILE
        config = AttentionTileConfig(decode_rows, decode_rows // group_p, tile_n, warps, stages)
    elif rows_needed <= 64:
        config = AttentionTileConfig(64, 64 // group_p, tile_n=64, num_warps=4, num_stages=2)
    elif PREFILL_TILE is not None:
        rows, tile_n, warps, stages = PREFILL_TILE
        block_m = max(rows, group_p)
        config = AttentionTileConfig(block_m, block_m // group_p, tile_n, warps, stages)
    else:
        # 64 rows, 4 warps, 3 stages: 15-20% faster than 128 rows / 8 warps / 2 stages in every prefill
        # case of bench/prefill_attention.py on an H100 (8 x 1,024: 354 -> 283 us), within 2% of the best.
        block_m = max(64, group_p)
        config = AttentionTileConfig(block_m, block_m // group_p, tile_n=64, num_warps=4, num_stages=3)
    if (head_dim > 128 or element_size > 2) and config.tile_n > 32:
        # Keep the pipelined K and V tiles within shared memory for wide heads and float32 caches.
        config = AttentionTileConfig(config.block_m, config.block_q, 32, config.num_warps, config.num_stages)
    return config


def choose_num_splits(num_programs: int, max_seq_len: int, num_sms: int) -> int:
    """How many KV partitions (flash-decoding) a step should use; 1 means no split.

    ``num_programs`` is the unsplit grid size (query programs x KV heads). Split only when that grid
    leaves SMs idle, and only as far as each split keeps at least ``MIN_TOKENS_PER_SPLIT`` tokens of the
    longest context. Powers of two keep the number of compiled reduction kernels small.
    """
    if num_programs <= 0 or num_sms <= 0:
        return 1
    if num_programs >= num_sms:
        return 1
    wanted = -(-TARGET_PROGRAMS_PER_SM * num_sms // num_programs)
    by_length = max_seq_len // MIN_TOKENS_PER_SPLIT
    splits = min(wanted, by_length, MAX_SPLITS)
    return prev_power_of_2(splits) if splits >= 2 else 1


def choose_decode_pieces(num_programs: int, num_sms: int, programs_per_sm: int = PIECE_PROGRAMS_PER_SM) -> int:
    """The most pieces a request of a decode step is cut into (1: none), from the unsplit grid size.

    A power of two between 1 and ``MAX_PIECES``: each request then has as many pieces of at least
    ``PIECE_TOKENS`` as its length gives, up to this bound, so the grid holds about
    ``programs_per_sm`` programs per SM when contexts are long and fewer when they are short."""
    if num_programs <= 0 or num_sms <= 0:
        return 1
    return max(1, min(MAX_PIECES, prev_power_of_2(max(1, programs_per_sm * num_sms // num_programs))))


def decode_piece_policy(value: str) -> tuple[int, int] | None:
    """WARD_DECODE_PIECES as (piece tokens, programs per SM), or None: pieces off, the default (on an
    H100 they cut a lone kernel's time at batch 16-32 with spread lengths but not the engine's mixed
    workload, docs/performance.md). "1" takes PIECE_TOKENS and PIECE_PROGRAMS_PER_SM, "512:8" sets
    both (A/B timing)."""
    if value == "0":
        return None
    if value == "1":
        return PIECE_TOKENS, PIECE_PROGRAMS_PER_SM
    tokens, _, per_sm = value.partition(":")
    if not tokens.isdigit() or int(tokens) < 1 or (per_sm and (not per_sm.isdigit() or int(per_sm) < 1)):
        raise ValueError(f"WARD_DECODE_PIECES must be 0, 1 or TOKENS[:PROGRAMS_PER_SM], got {value!r}")
    return int(tokens), int(per_sm or PIECE_PROGRAMS_PER_SM)
