"""Models that mix global and sliding-window layers (Gemma 2, Gemma 3, MedGemma) keep a block table
per group of layers (``worker.engine.kv_layout``): global groups keep every block, sliding groups give
back what falls out of the window. Checked here: the grouping, exact blocks on a tiny pool, the
prefix cache across groups, a property over random schedules (every query reads, in every group,
keys its own request wrote), and the engine on tiny Gemma 2/3 checkpoints: transformers' tokens over
contexts many windows long, on a pool that could not hold them one table for all layers."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Gemma2Config, Gemma3TextConfig

from tests.test_model_families import COMMON, LOCAL_GLOBAL_ROPE, VOCAB, one_torch_thread  # noqa: F401  (autouse)
from tests.test_prefix_cache_integrity import PREFIXES, Driver, _request
from tests.test_sliding_window_kv import operation, play, random_checkpoint, run_greedy
from worker.engine.hybrid_kv_cache_manager import HybridKVCacheManager
from worker.engine.kv_layout import plan_kv_layout
from worker.engine.scheduler import Scheduler
from worker.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from worker.llm import LLM

BS = 4


def held_bound(window: int, step_tokens: int) -> int:
    # a sliding group's blocks: [first query - window + 1, first query + step tokens), rounded out
    return (window - 1 + step_tokens) // BS + 2


# ---- the grouping -------------------------------------------------------------------------------

def test_gemma3_27b_layers_form_one_global_and_six_sliding_groups_of_ten():
    windows = [None if (i + 1) % 6 == 0 else 1024 for i in range(62)]  # 5 local, 1 global; 62 layers
    layout = plan_kv_layout(windows, 131072)
    assert layout.layers_per_block == 10
    assert layout.windows == (None,) + (1024,) * 6
    assert layout.groups[0].layers == (5, 11, 17, 23, 29, 35, 41, 47, 53, 59)
    assert [len(g.layers) for g in layout.groups[1:]] == [10, 10, 10, 10, 10, 2]
    # every layer has one (group, slot), and no two layers of a group share a slot
    seen = {(layout.layer_group[i], layout.layer_slot[i]) for i in range(62)}
    assert len(seen) == 62 and all(0 <= layout.layer_slot[i] < 10 for i in range(62))
    assert all(windows[i] == layout.groups[layout.layer_group[i]].window for i in range(62))


def test_gemma2_alternating_layers_form_two_groups():
    layout = plan_kv_layout([4096, None] * 21, 8192)
    assert layout.windows == (None, 4096) and layout.layers_per_block == 21
    assert layout.groups[0].layers == tuple(range(1, 42, 2))


@pytest.mark.parametrize("windows, max_len, expected", [
    ([None, None], 4096, (None,)),  # every layer global
    ([4096, None, 4096], 4096, (None,)),  # windows that cover the context are global in effect
    ([8, 16, 8], 4096, (16,)),  # every layer windowed: one table, the widest window
])
def test_uniform_models_keep_one_group_of_every_layer(windows, max_len, expected):
    layout = plan_kv_layout(windows, max_len)
    assert layout.windows == expected and layout.layers_per_block == len(windows)


# ---- the manager --------------------------------------------------------------------------------

def test_the_global_group_keeps_every_block_and_the_sliding_group_gives_back_its_oldest():
    kv = HybridKVCacheManager(num_blocks=12, block_size=BS, windows=[None, 6])
    req = _request(0, list(range(8)), max_tokens=40, priority=0)
    assert kv.allocate_slots(req, 8) == ([0, 1], [2, 3])
    req.num_computed_tokens = 8
    # query at 8 reads keys 3..8: block 0 still needed in both groups
    assert kv.allocate_slots(req, 1) == ([4], [5]) and kv.num_held_blocks("r0") == 6
    req.num_computed_tokens = 9
    # query at 9 reads keys 4..9: the sliding group gives block 0 back, the global group keeps it
    assert kv.allocate_slots(req, 1) == ([], []) and kv.num_held_blocks("r0") == 5
    assert kv.get_block_ids("r0") == ([0, 1, 4], [2, 3, 5])  # the given-back id keeps its place
    assert kv.pool.num_free_blocks == 12 - 5
    kv.free(req)
    assert kv.pool.num_free_blocks == 12 and kv.num_allocated_blocks == 0 and kv.num_global_blocks == 0


def test_a_long_request_holds_its_context_once_plus_a_window_per_sliding_group():
    kv = HybridKVCacheManager(num_blocks=200, block_size=BS, windows=[None, 5, 5, 9])
    req = _request(0, list(range(6)), max_tokens=300, priority=0)
    kv.allocate_slots(req, 6)
    req.num_computed_tokens = 6
    for _ in range(250):
        assert kv.allocate_slots(req, 1) is not None
        context_blocks = -(-(req.num_computed_tokens + 1) // BS)
        assert kv.num_held_blocks("r0") <= context_blocks + 2 * held_bound(5, 1) + held_bound(9, 1)
        req.num_computed_tokens += 1
    assert kv.num_held_blocks("r0") < 2 * context_blocks  # one table for all four groups would hold 4x
    assert kv.num_allocated_slots() == len(kv.get_block_ids("r0")[0]) * BS


def test_a_prefix_hit_revives_the_window_only_in_sliding_groups():
    kv = HybridKVCacheManager(num_blocks=40, block_size=BS, windows=[None, 6])
    prompt = list(range(30))
    first = _request(0, prompt, max_tokens=1, priority=0)
    kv.allocate_slots(first, 30)
    first.num_computed_tokens = 30
    kv.cache_blocks(first, 30)  # seven full blocks written and registered in both groups
    ids_first = kv.get_block_ids("r0")
    second = _request(1, prompt + [99], max_tokens=1, priority=0)
    hits, num_hit = kv.get_computed_blocks(second)
    assert num_hit == 28  # blocks 0..6 in the global group; the window of position 28 in the sliding one
    skipped = (28 - 6 + 1) // BS  # blocks wholly before the window of the first query (position 28)
    assert kv.allocate_slots(second, 31 - num_hit, hits) is not None
    got = kv.get_block_ids("r1")
    assert got[0][:7] == ids_first[0][:7]
    assert got[1][skipped:7] == ids_first[1][skipped:7]
    assert kv.num_held_blocks("r1") == 8 + (8 - skipped)
    kv.free(second)
    kv.free(first)
    assert kv.pool.num_free_blocks == 40 and kv.num_allocated_blocks == 0


def test_a_miss_in_the_sliding_window_shortens_the_hit():
    kv = HybridKVCacheManager(num_blocks=40, block_size=BS, windows=[None, 6])
    prompt = list(range(30))
    first = _request(0, prompt, max_tokens=1, priority=0)
    kv.allocate_slots(first, 30)
    first.num_computed_tokens = 30
    kv.cache_blocks(first, 30)
    kv.free(first)
    # the sliding group's block 6 is evicted (reused): a hit of seven blocks is no longer whole there
    kv.pool._evict(kv.pool.cached[first.block_hashes[6] + bytes([1])])
    hits, num_hit = kv.get_computed_blocks(_request(1, prompt + [99], max_tokens=1, priority=0))
    assert num_hit == 24  # six blocks: the window of position 24 (blocks 4 and 5) is still cached
    assert [len(h) for h in hits] == [6, 6] and hits[0][5] is kv.pool.cached[first.block_hashes[5] + bytes([0])]


def test_every_groups_hits_leave_the_free_list_before_any_group_takes_a_new_block():
    """A hit of group 1 at the head of the free list must not be taken as group 0's new block (it was,
    once: a re-admitted request then held one block in two groups, found by the property below)."""
    kv = HybridKVCacheManager(num_blocks=8, block_size=BS, windows=[None, 6])
    a, b = _request(0, list(range(8)), max_tokens=4, priority=0), _request(1, list(range(50, 58)), 4, 0)
    for req in (a, b):
        kv.allocate_slots(req, 8)
        req.num_computed_tokens = 8
        kv.cache_blocks(req, 8)
    kv.free(a)
    kv.free(b)  # the free list now starts with a's blocks: 1, 0 (group 0), 3, 2 (group 1)
    c = _request(2, list(range(8)) + [99], max_tokens=4, priority=0)
    hits, num_hit = kv.get_computed_blocks(c)
    assert num_hit == 8
    assert kv.allocate_slots(c, 1, hits) is not None
    tables = kv.get_block_ids("r2")
    ids = [i for table in tables for i in table]
    assert len(ids) == len(set(ids)), tables
    assert all(kv.pool.blocks[i].ref_cnt == 1 for i in ids)


class GroupWindowRunner:
    """Plays the model runner for a hybrid KV cache: each step writes every scheduled token into every
    group's slot, then checks each query's reads in each group (global: every earlier key; sliding:
    the window) still hold that group's token of that position. A block given back too early and
    reused, or a prefix hit on a slot nothing wrote, fails."""

    def __init__(self, windows: list[int | None]) -> None:
        self.windows = windows
        self.tokens: dict[str, list[int]] = {}
        self.tables: dict[str, list[list[int]]] = {}
        self.computed: dict[str, int] = {}
        self.slots: dict[tuple[int, int], tuple[int, int]] = {}  # (block, offset) -> (group, token)
        self.reads_checked = 0

    def _check(self, rid: str, pos: int) -> None:
        toks = self.tokens[rid]
        for g, w in enumerate(self.windows):
            for key in range(0 if w is None else max(0, pos - w + 1), pos + 1):
                table = self.tables[rid][g]
                assert self.slots.get((table[key // BS], key % BS)) == (g, toks[key]), f"{rid} group {g} q{pos} k{key}"
                self.reads_checked += 1

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        for rid in out.freed_req_ids:
            self.tokens.pop(rid, None)
            self.tables.pop(rid, None)
        for new in out.new_reqs:
            self.tokens[new.req_id] = list(new.token_ids)
            self.tables[new.req_id] = [list(ids) for ids in new.block_ids]
            self.computed[new.req_id] = new.num_computed_tokens
        for c in out.cached_reqs:
            for table, ids in zip(self.tables[c.req_id], c.new_block_ids):
                table.extend(ids)
            self.computed[c.req_id] = c.num_computed_tokens
        starts = {}
        for rid, n in out.num_scheduled_tokens.items():
            toks, start = self.tokens[rid], self.computed[rid]
            starts[rid] = start
            for pos in range(start, start + n):
                for g, table in enumerate(self.tables[rid]):
                    self.slots[(table[pos // BS], pos % BS)] = (g, toks[pos])
        sampled = {}
        for rid, n in out.num_scheduled_tokens.items():
            toks, start = self.tokens[rid], starts[rid]
            for pos in range(start, start + n):
                self._check(rid, pos)
            self.computed[rid] = start + n
            if start + n >= len(toks):
                t = (sum(toks) * 31 + len(toks)) % 97 + 1
                toks.append(t)
                sampled[rid] = [t]
        return ModelRunnerOutput(sampled)


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=40), st.booleans(),
       st.sampled_from([[None, 3], [None, 5, 5], [None, 1, 9], [5, None, 5, None]]), st.integers(12, 30),
       st.integers(3, 10), st.booleans())
def test_every_query_reads_its_own_keys_in_every_group(ops, asynchronous, windows, num_blocks, budget, caching):
    kv = HybridKVCacheManager(num_blocks, BS, windows, enable_prefix_caching=caching)
    sched = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=40)
    runner = GroupWindowRunner(windows)
    driver = Driver(sched, runner, asynchronous)
    play(sched, driver, ops, capacity=kv.capacity_tokens(budget))  # what the engine admits
    driver.finish()
    assert kv.pool.num_used_blocks == 0 and kv.num_allocated_blocks == 0 and kv.num_global_blocks == 0


@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_property_exercises_hits_and_preemptions(asynchronous):
    """The random schedules above are not vacuous: this fixed one has prefix hits, preemptions and
    re-admissions that hit the cache, and every read checked."""
    windows = [5, None, 5, None]
    kv = HybridKVCacheManager(16, BS, windows)
    sched = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=6, max_model_len=40)
    runner = GroupWindowRunner(windows)
    driver = Driver(sched, runner, asynchronous)
    for i in range(4):
        sched.add_request(_request(i, PREFIXES[0] + [60 + i], 6, 0))
        driver.step()
    driver.finish()
    assert sched.num_preemptions > 0 and kv.prefix_stats.hits > 0 and runner.reads_checked > 100
    assert kv.pool.num_used_blocks == 0 and kv.num_allocated_blocks == 0


# ---- the engine on tiny Gemma checkpoints --------------------------------------------------------

def _greedy_reference(hf, prompt: list[int], new: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(new):  # transformers' full forward each time: no cache of its own to trust
            seq.append(int(hf(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def gemma3_config() -> Gemma3TextConfig:
    # 5 sliding-window layers (window 5) then a global one
    return Gemma3TextConfig(**COMMON, num_hidden_layers=6, head_dim=16, sliding_window=5, query_pre_attn_scalar=24,
                            rope_parameters=LOCAL_GLOBAL_ROPE)


def test_gemma3_serves_contexts_many_windows_long_on_a_pool_one_table_could_not_hold(tmp_path):
    """Gemma 3 (5 local layers, window 5, then a global one): six groups of one layer. Two requests
    of 12 + 48 tokens need 2 x 15 blocks of six layers (180 layer-blocks) with one table for all
    layers; the pool has 90 one-layer blocks. Neither is preempted, and both give transformers'
    greedy tokens (so no given-back block was read)."""
    hf = random_checkpoint(gemma3_config(), tmp_path)
    rng = random.Random(11)
    prompts = [[rng.randrange(VOCAB) for _ in range(12)] for _ in range(2)]
    new = 48
    expected = [_greedy_reference(hf, p, new) for p in prompts]
    llm = LLM(model=str(tmp_path), device="cpu", dtype="float32", block_size=BS, num_kv_blocks=90, max_model_len=64,
              max_num_batched_tokens=8, async_scheduling=False)
    layout = llm.engine.runner.kv_layout
    assert layout.num_groups == 6 and layout.layers_per_block == 1
    got, peak = run_greedy(llm, prompts, new)
    assert got == expected
    assert llm.engine.scheduler.num_preemptions == 0
    assert peak <= 2 * (15 + 5 * held_bound(5, 8)) < 180


@pytest.mark.parametrize("asynchronous", [False, True])
def test_gemma3_under_preemption_gives_transformers_tokens(tmp_path, asynchronous):
    """Four requests on 60 one-layer blocks: some are preempted and come back (through the prefix
    cache, in every group), with and without asynchronous scheduling."""
    hf = random_checkpoint(gemma3_config(), tmp_path)
    rng = random.Random(11)
    prompts = [[rng.randrange(VOCAB) for _ in range(12)] for _ in range(3)] + [[5, 6, 7] * 5]
    expected = [_greedy_reference(hf, p, 30) for p in prompts]
    llm = LLM(model=str(tmp_path), device="cpu", dtype="float32", block_size=BS, num_kv_blocks=60, max_model_len=64,
              max_num_batched_tokens=8, async_scheduling=asynchronous)
    got, _ = run_greedy(llm, prompts, 30)
    assert got == expected
    assert llm.engine.scheduler.num_preemptions > 0


def test_gemma2_prefix_hits_across_groups_give_the_same_tokens(tmp_path):
    """Gemma 2 (alternating layers, window 5, soft-capping): two groups of two layers. A prompt of
    several windows is served, then again with a new ending: the second finds its prefix in both
    groups (the sliding one only its window) and still gives transformers' tokens."""
    cfg = Gemma2Config(**COMMON, num_hidden_layers=4, head_dim=16, sliding_window=5, query_pre_attn_scalar=24,
                       attn_logit_softcapping=1.5, final_logit_softcapping=2.0)
    hf = random_checkpoint(cfg, tmp_path)
    rng = random.Random(12)
    shared = [rng.randrange(VOCAB) for _ in range(26)]
    prompts = [shared + [3], shared + [7, 8]]
    new = 10
    expected = [_greedy_reference(hf, p, new) for p in prompts]
    llm = LLM(model=str(tmp_path), device="cpu", dtype="float32", block_size=BS, num_kv_blocks=40, max_model_len=64,
              max_num_batched_tokens=16)
    assert llm.engine.runner.kv_layout.windows == (None, 5)
    first, _ = run_greedy(llm, prompts[:1], new)
    stats = llm.engine.kv.prefix_stats
    before = stats.hits
    second, _ = run_greedy(llm, prompts[1:], new)
    assert stats.hits - before == 24  # six full blocks of the shared prefix
    assert [first[0], second[0]] == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the GPU test below runs the kernels")
def test_the_triton_kernels_read_each_groups_table_in_the_interpreter():
    """The engine with the Triton attention backend (the GPU path) on the CPU, inside Triton's
    interpreter in a fresh process (``tests/hybrid_kv_interpreter.py``): per-group block tables,
    given-back ids and a prefix hit's stand-ins, against transformers' greedy tokens."""
    from interpreter_run import run_interpreter_script

    pytest.importorskip("triton")
    result = run_interpreter_script("hybrid_kv_interpreter.py", timeout=400)
    assert result["groups"] == 6 and result["prefix_hits"] > 0
    assert result["got"] == result["expected"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: CUDA is not available")
def test_gemma3_groups_on_the_gpu_with_cuda_graphs(tmp_path):
    """The same long-context case on the GPU: Triton kernels, asynchronous scheduling and decode CUDA
    graphs over the per-group tables give transformers' greedy tokens, without preemption."""
    hf = random_checkpoint(gemma3_config(), tmp_path)
    rng = random.Random(11)
    prompts = [[rng.randrange(VOCAB) for _ in range(12)] for _ in range(2)]
    new = 48
    expected = [_greedy_reference(hf, p, new) for p in prompts]
    llm = LLM(model=str(tmp_path), device="cuda", dtype="float32", block_size=BS, num_kv_blocks=90, max_model_len=64,
              max_num_batched_tokens=8)
    assert llm.engine.runner.graphs is not None
    got, _ = run_greedy(llm, prompts, new)
    assert got == expected and llm.engine.scheduler.num_preemptions == 0
