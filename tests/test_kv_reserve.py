"""Admission keeps KV room for the running requests (``reserved_output_tokens``): a new request is
not admitted where it would force a running one out to be recomputed."""
from __future__ import annotations

import pytest

from tests.test_scheduler import BS, FakeRunner, req, run_to_end
from worker.config import EngineConfig
from worker.engine.hybrid_kv_cache_manager import HybridKVCacheManager
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.scheduler import Scheduler


def scheduler(num_blocks: int, reserve: int, *, budget: int = 64, max_seqs: int = 8,
              beyond: int | None = None) -> Scheduler:
    return Scheduler(KVCacheManager(num_blocks, BS), max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                     max_model_len=256, reserved_output_tokens=reserve, reserve_beyond_seqs=beyond)


def four_requests(s: Scheduler) -> None:
    for i in range(4):
        s.add_request(req(f"r{i}", 6, max_tokens=12, arrival=i, seed=i))


def test_without_the_reserve_a_small_pool_preempts_and_with_it_none_is_and_the_output_is_the_same():
    # 4 requests of 6 + 12 tokens need 5 blocks of 4 each: 20 blocks; the pool has 12.
    plain = scheduler(12, reserve=0)
    four_requests(plain)
    expected, _ = run_to_end(plain, FakeRunner())
    assert plain.num_preemptions > 0

    kept = scheduler(12, reserve=256)
    four_requests(kept)
    got, steps = run_to_end(kept, FakeRunner())
    assert kept.num_preemptions == 0
    assert kept.num_reserve_waits > 0
    assert got == expected
    assert all(len(tokens) == 12 for tokens in got.values())
    assert kept.kv.pool.num_used_blocks == 0
    # two run at once (10 blocks), the others wait for room instead of being pushed out later
    assert max(len(out.num_scheduled_tokens) for out in steps) == 2


def test_the_reserve_covers_only_the_first_reserved_outputs():
    # With room kept for 2 outputs only, 3 requests start at once (3 x 2 blocks of prompt + 2 outputs
    # fit 12 blocks with room) and grow past what was kept: the pool runs dry and one is preempted.
    s = scheduler(12, reserve=2)
    four_requests(s)
    _, steps = run_to_end(s, FakeRunner())
    assert max(len(out.num_scheduled_tokens) for out in steps) >= 3
    assert s.num_preemptions > 0


def test_beyond_n_running_requests_a_new_one_needs_room_for_every_whole_output():
    # 12 blocks of 4: each request (6 + 12 tokens) holds 5 at its end. The first two seats are given as
    # blocks allow; a third only while the free blocks cover both whole outputs besides its own: never.
    plain = scheduler(12, reserve=0)
    four_requests(plain)
    expected, _ = run_to_end(plain, FakeRunner())

    guarded = scheduler(12, reserve=0, beyond=2)
    four_requests(guarded)
    got, steps = run_to_end(guarded, FakeRunner())
    assert got == expected
    assert guarded.num_preemptions == 0 and guarded.num_reserve_waits > 0
    assert max(len(out.num_scheduled_tokens) for out in steps) == 2

    # Three seats given freely outgrow the pool: a running request is pushed out and recomputed.
    loose = scheduler(12, reserve=0, beyond=3)
    four_requests(loose)
    assert run_to_end(loose, FakeRunner())[0] == expected
    assert loose.num_preemptions > 0


def test_beyond_n_running_requests_more_run_at_once_where_the_pool_holds_them_all():
    roomy = scheduler(64, reserve=0, beyond=2)  # 4 x 5 blocks fit: all four run together
    four_requests(roomy)
    _, steps = run_to_end(roomy, FakeRunner())
    assert max(len(out.num_scheduled_tokens) for out in steps) == 4
    assert roomy.num_preemptions == 0 and roomy.num_reserve_waits == 0


def test_an_empty_batch_takes_a_request_larger_than_the_room_it_would_keep():
    s = scheduler(6, reserve=256)  # 6 blocks: the prompt (2) fits, prompt + 12 outputs (5) fits, not more
    s.add_request(req("big", 6, max_tokens=200))
    out = s.schedule()
    assert out.num_scheduled_tokens == {"big": 6}


def test_a_more_urgent_request_is_not_held_back_by_the_room_kept():
    s = scheduler(12, reserve=256)
    s.add_request(req("early", 6, max_tokens=12, arrival=1, seed=1))
    s.add_request(req("mid", 6, max_tokens=12, arrival=2, seed=2))
    runner = FakeRunner()
    out = s.schedule()
    s.update_from_output(out, runner.execute(out))
    assert set(out.num_scheduled_tokens) == {"early", "mid"}
    s.add_request(req("late", 6, max_tokens=12, arrival=3, seed=3))
    s.add_request(req("urgent", 6, max_tokens=12, priority=-1, arrival=4, seed=4))
    out = s.schedule()
    assert "urgent" in out.num_scheduled_tokens  # may preempt the others: the room does not stop it
    assert "late" not in out.num_scheduled_tokens


def test_blocks_to_hold_counts_what_a_request_still_takes():
    kv = KVCacheManager(32, BS)
    r = req("a", 6, max_tokens=20)
    assert kv.blocks_to_hold(r, 26) == 7  # nothing held yet
    assert kv.blocks_to_hold(r, 26, num_cached_tokens=4) == 6  # a prefix hit of one block
    assert kv.allocate_slots(r, 6) is not None  # two blocks
    assert kv.blocks_to_hold(r, 26) == 5
    assert kv.blocks_to_hold(r, 8) == 0


def test_blocks_to_hold_stops_at_a_sliding_window():
    kv = KVCacheManager(64, BS, sliding_window=8)  # at most 8 / 4 + 1 = 3 blocks held
    r = req("a", 6, max_tokens=100)
    assert kv.blocks_to_hold(r, 106) == 3
    kv.allocate_slots(r, 6)
    assert kv.blocks_to_hold(r, 106) == 1


def test_blocks_to_hold_over_the_groups_of_a_hybrid_pool():
    kv = HybridKVCacheManager(64, BS, windows=[None, 8, None])  # two global groups, one window of 8
    r = req("a", 6, max_tokens=100)
    assert kv.blocks_to_hold(r, 26) == 7 * 2 + 3  # the window group stops at 3 blocks
    kv.allocate_slots(r, 6)  # 2 blocks in each group
    assert kv.blocks_to_hold(r, 26) == 5 * 2 + 1


def test_a_negative_reserve_is_refused():
    with pytest.raises(ValueError, match="reserved_output_tokens"):
        EngineConfig(reserved_output_tokens=-1)
    with pytest.raises(ValueError, match="reserved_output_tokens"):
        scheduler(8, reserve=-1)
    with pytest.raises(ValueError, match="reserve_beyond_seqs"):
        EngineConfig(reserve_beyond_seqs=0)
    with pytest.raises(ValueError, match="reserve_beyond_seqs"):
        scheduler(8, reserve=0, beyond=0)


def test_the_engine_takes_the_reserve_from_its_config_and_a_tight_pool_then_preempts_nothing(default_model_dir):
    from worker import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    prompts = [{"prompt_token_ids": list(range(100 + 7 * i, 160 + 7 * i))} for i in range(6)]
    plain = LLM(model=default_model_dir, device="cpu", max_model_len=1024, num_kv_blocks=24)
    kept = LLM(model=default_model_dir, device="cpu", max_model_len=1024, num_kv_blocks=24, reserved_output_tokens=256)
    expected = [o.outputs[0].token_ids for o in plain.generate(prompts, params)]
    got = [o.outputs[0].token_ids for o in kept.generate(prompts, params)]
    assert got == expected
    assert plain.engine.stats().num_preemptions > 0  # the pool is tight: without the reserve it preempts
    stats = kept.engine.stats()
    assert stats.num_preemptions == 0 and stats.num_reserve_waits > 0
    assert kept.engine.kv.pool.num_used_blocks == 0


def test_the_worker_takes_reserve_beyond_seqs_from_its_flag_and_leaves_it_off_by_default():
    import argparse

    from worker.server.cli import add_arguments, engine_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert engine_config(parser.parse_args(["--model", "m"]), "m").reserve_beyond_seqs is None
    flagged = parser.parse_args(["--model", "m", "--max-num-seqs", "1024", "--reserve-beyond-seqs", "256"])
    config = engine_config(flagged, "m")
    assert (config.max_num_seqs, config.reserve_beyond_seqs) == (1024, 256)
