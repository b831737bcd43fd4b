"""Allocator behaviour on tiny pools: exact block ids, eviction order, ref counts, prefix hits, salts."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.block_pool import BlockPool
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.request import Request
from worker.sampling_params import SamplingParams

BS = 4


def make_request(rid: str, tokens: list[int], salt: str | None = None) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=8), max_tokens=8, block_size=BS, cache_salt=salt)


def step(kv: KVCacheManager, r: Request, n: int, hits=None):
    """Allocates for ``n`` more tokens and, as a launched step would, makes their full blocks findable."""
    ids = kv.allocate_slots(r, n, hits)
    if ids is not None:
        kv.cache_blocks(r, r.num_computed_tokens + len(hits or []) * BS + n)
    return ids


def test_blocks_are_taken_from_the_head_of_the_free_list_in_order():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    r = make_request("a", list(range(10)))
    assert kv.allocate_slots(r, 10) == [0, 1, 2]
    r2 = make_request("b", list(range(100, 105)))
    assert kv.allocate_slots(r2, 5) == [3, 4]
    assert kv.pool.num_free_blocks == 3


def test_allocation_grows_on_demand_one_block_per_block_size_tokens():
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    r = make_request("a", [1, 2, 3])
    assert kv.allocate_slots(r, 3) == [0]
    r.num_computed_tokens = 3
    r.append_token(4)
    assert kv.allocate_slots(r, 1) == []  # the 4th token still fits block 0
    r.num_computed_tokens = 4
    r.append_token(5)
    assert kv.allocate_slots(r, 1) == [1]


def test_allocate_says_no_cheaply_when_the_pool_is_short_and_changes_nothing():
    kv = KVCacheManager(num_blocks=2, block_size=BS)
    r = make_request("a", list(range(9)))
    assert kv.allocate_slots(r, 9) is None
    assert kv.pool.num_free_blocks == 2
    assert kv.get_block_ids("a") == []


def test_free_returns_blocks_tail_first_so_the_prefix_is_evicted_last():
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    r = make_request("a", list(range(12)))
    step(kv, r, 12)  # blocks 0, 1, 2
    kv.free(r)
    # free list: the never-used block 3, then 2, 1, 0 (tail of the request first)
    assert kv.pool.free_queue.block_ids() == [3, 2, 1, 0]
    # a new request takes 3, then evicts 2 (the tail of the old prompt) before its prefix
    r2 = make_request("b", list(range(50, 58)))
    assert step(kv, r2, 8) == [3, 2]
    assert kv.pool.blocks[2].token_ids == tuple(range(54, 58))  # evicted, now holds b's second block
    assert kv.pool.blocks[0].block_hash is not None and kv.pool.blocks[1].block_hash is not None


def test_prefix_hit_shares_blocks_and_counts_references():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    prompt = list(range(13))  # 3 full blocks + 1 token
    a = make_request("a", prompt)
    assert step(kv, a, 13) == [0, 1, 2, 3]
    b = make_request("b", prompt + [99])
    hits, n = kv.get_computed_blocks(b)
    assert [blk.block_id for blk in hits] == [0, 1, 2] and n == 12
    new = step(kv, b, b.num_tokens - n, hits)
    assert new == [0, 1, 2, 4]
    assert [kv.pool.blocks[i].ref_cnt for i in range(5)] == [2, 2, 2, 1, 1]
    kv.free(a)
    assert [kv.pool.blocks[i].ref_cnt for i in range(5)] == [1, 1, 1, 0, 1]


def test_a_hit_always_leaves_one_token_to_compute():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    prompt = list(range(8))  # exactly two blocks
    a = make_request("a", prompt)
    step(kv, a, 8)
    b = make_request("b", prompt)
    hits, n = kv.get_computed_blocks(b)
    assert n == 4 and len(hits) == 1


def test_freed_cached_blocks_can_still_be_hit_until_reused():
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    prompt = list(range(9))
    a = make_request("a", prompt)
    step(kv, a, 9)
    kv.free(a)
    b = make_request("b", prompt)
    hits, n = kv.get_computed_blocks(b)
    assert [blk.block_id for blk in hits] == [0, 1] and n == 8
    assert step(kv, b, 1, hits) == [0, 1, 3]  # the two hits revived, then never-used block 3


def test_lru_eviction_takes_the_least_recently_freed_block():
    kv = KVCacheManager(num_blocks=3, block_size=BS)
    x = make_request("x", [1, 2, 3, 4, 5])
    y = make_request("y", [6, 7, 8, 9, 10])
    step(kv, x, 5)  # 0, 1
    kv.free(x)  # free list: 2, 1, 0
    step(kv, y, 5)  # takes 2 and 1
    assert kv.get_block_ids("y") == [2, 1]
    assert kv.pool.blocks[0].block_hash is not None  # x's first block survives
    z = make_request("z", [1, 2, 3, 4, 99])
    hits, _ = kv.get_computed_blocks(z)
    assert [b.block_id for b in hits] == [0]


def test_different_salts_never_share_blocks():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    prompt = list(range(9))
    a = make_request("a", prompt, salt="cardiology")
    step(kv, a, 9)
    other = make_request("b", prompt, salt="oncology")
    assert kv.get_computed_blocks(other) == ([], 0)
    unsalted = make_request("c", prompt)
    assert kv.get_computed_blocks(unsalted) == ([], 0)
    same = make_request("d", prompt, salt="cardiology")
    assert kv.get_computed_blocks(same)[1] == 8


def test_allocation_alone_makes_no_block_findable():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    a = make_request("a", list(range(9)))
    kv.allocate_slots(a, 9)
    assert kv.get_computed_blocks(make_request("b", list(range(9)))) == ([], 0)
    kv.cache_blocks(a, 8)  # the step that writes them is certain to run
    assert kv.get_computed_blocks(make_request("c", list(range(9))))[1] == 8


def test_a_hash_hit_is_verified_against_the_token_ids():
    pool = BlockPool(4)
    block = pool.get_new_blocks(1)[0]
    pool.cache_block(block, b"h" * 16, [1, 2, 3, 4])
    assert pool.get_cached_block(b"h" * 16, [1, 2, 3, 4]) is block
    assert pool.get_cached_block(b"h" * 16, [1, 2, 3, 5]) is None


def test_prefix_counters_count_tokens_looked_up_and_found():
    kv = KVCacheManager(num_blocks=10, block_size=BS)
    kv.record_prefix_lookup(10, 8)
    kv.record_prefix_lookup(6, 0)
    assert kv.prefix_stats.queries == 16 and kv.prefix_stats.hits == 8
    assert kv.prefix_stats.hit_rate == pytest.approx(0.5)


def test_freeing_more_often_than_taken_is_an_error():
    pool = BlockPool(2)
    b = pool.get_new_blocks(1)
    pool.free_blocks(b)
    with pytest.raises(RuntimeError):
        pool.free_blocks(b)


ops = st.lists(
    st.tuples(st.sampled_from(["new", "grow", "free"]), st.integers(0, 5), st.integers(1, 20), st.integers(0, 3)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_no_block_is_ever_owned_twice(sequence):
    """Property: across any sequence of allocations, growth, prefix hits and frees, each block's
    ref count equals the number of requests holding it, and a free block is held by nobody."""
    kv = KVCacheManager(num_blocks=12, block_size=BS)
    live: dict[str, Request] = {}
    counter = 0
    for op, which, n, prefix in sequence:
        if op == "new":
            counter += 1
            base = [prefix] * 4 + list(range(counter * 100, counter * 100 + n))  # shared first block by prefix
            r = make_request(f"r{counter}", base, salt=str(prefix % 2))
            hits, nhit = kv.get_computed_blocks(r)
            if step(kv, r, r.num_tokens - nhit, hits) is not None:
                r.num_computed_tokens = r.num_tokens
                live[r.request_id] = r
        elif op == "grow" and live:
            r = list(live.values())[which % len(live)]
            for t in range(n):
                r.append_token(7000 + t)
            if step(kv, r, r.num_tokens - r.num_computed_tokens) is not None:
                r.num_computed_tokens = r.num_tokens
            else:
                del r.token_ids[r.num_computed_tokens :]
                r.block_hashes = r.block_hashes[: r.num_computed_tokens // BS]
        elif op == "free" and live:
            r = live.pop(list(live)[which % len(live)])
            kv.free(r)
        holders: dict[int, int] = {}
        for rid in live:
            ids = kv.get_block_ids(rid)
            assert len(ids) == len(set(ids)), "a request holds one block twice"
            for b in ids:
                holders[b] = holders.get(b, 0) + 1
        free_ids = kv.pool.free_queue.block_ids()
        assert len(free_ids) == len(set(free_ids)) == kv.pool.num_free_blocks
        for blk in kv.pool.blocks:
            assert blk.ref_cnt == holders.get(blk.block_id, 0)
            assert (blk.block_id in free_ids) == (blk.ref_cnt == 0)
