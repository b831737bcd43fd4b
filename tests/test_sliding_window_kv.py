"""KV blocks out of every layer's sliding window are given back while a request runs
(``KVCacheManager(sliding_window=...)``): exact blocks on a tiny pool, a bound on the blocks a long
request holds, a property over random schedules (no query ever reads a slot overwritten after its
block was given back), and the engine on a windowed model: transformers' tokens, several windows
long, on a pool too small to hold them without freeing."""
from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, MistralConfig

from tests.test_prefix_cache_integrity import PREFIXES, Driver, SlotWritingRunner, _request
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.scheduler import Scheduler
from worker.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from tests.test_model_families import one_torch_thread  # noqa: F401  (autouse)
from worker.llm import LLM
from worker.sampling_params import SamplingParams

BS = 4


def held_bound(window: int, step_tokens: int) -> int:
    # blocks covering [first query - window + 1, first query + step tokens), rounded out at both ends
    return (window - 1 + step_tokens) // BS + 2


def test_leading_blocks_are_given_back_once_out_of_the_window():
    kv = KVCacheManager(num_blocks=10, block_size=BS, sliding_window=6)
    req = _request(0, list(range(8)), max_tokens=40, priority=0)
    assert kv.allocate_slots(req, 8) == [0, 1]
    req.num_computed_tokens = 8
    # query at 8 reads keys 3..8: block 0 (keys 0..3) is still needed
    assert kv.allocate_slots(req, 1) == [2] and kv.num_held_blocks("r0") == 3
    req.num_computed_tokens = 9
    # query at 9 reads keys 4..9: block 0 is out of the window and goes back to the free list's tail
    assert kv.allocate_slots(req, 1) == [] and kv.num_held_blocks("r0") == 2
    assert kv.pool.free_queue.block_ids() == [3, 4, 5, 6, 7, 8, 9, 0]
    assert kv.get_block_ids("r0") == [0, 1, 2]  # logical positions keep their (stale) ids
    req.num_computed_tokens = 10
    for _ in range(30):  # several windows long: the held blocks stay bounded
        kv.allocate_slots(req, 1)
        req.num_computed_tokens += 1
        assert kv.num_held_blocks("r0") <= held_bound(6, 1)
        assert kv.pool.num_used_blocks == kv.num_held_blocks("r0") == kv.num_allocated_blocks
    assert len(kv.get_block_ids("r0")) == 10  # 40 tokens: more blocks than the pool has free at once
    kv.free(req)
    assert kv.pool.num_used_blocks == 0 and kv.num_allocated_blocks == 0


def test_without_a_window_nothing_is_given_back():
    kv = KVCacheManager(num_blocks=12, block_size=BS)
    req = _request(0, list(range(8)), max_tokens=30, priority=0)
    kv.allocate_slots(req, 8)
    req.num_computed_tokens = 8
    for _ in range(30):
        kv.allocate_slots(req, 1)
        req.num_computed_tokens += 1
    assert kv.num_held_blocks("r0") == kv.pool.num_used_blocks == 10


def test_released_blocks_are_never_registered_in_the_prefix_cache():
    kv = KVCacheManager(num_blocks=10, block_size=BS, sliding_window=2)
    req = _request(0, list(range(12)), max_tokens=4, priority=0)
    kv.allocate_slots(req, 12)
    req.num_computed_tokens = 12
    kv.allocate_slots(req, 1)  # query at 12 reads keys 11..12: blocks 0 and 1 go back unregistered
    kv.cache_blocks(req, 13)
    assert kv.num_held_blocks("r0") == 2
    assert [b.block_hash is None for b in kv.pool.blocks[:3]] == [True, True, False]


class WindowCheckingRunner(SlotWritingRunner):
    """Also checks every query's reads: after the step's writes, each key in the query's window must
    still hold the token of its position (a block given back too early and reused would not)."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window
        self.reads_checked = 0

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        starts = {rid: self.computed.get(rid, 0) for rid in out.num_scheduled_tokens}
        for new in out.new_reqs:
            starts[new.req_id] = new.num_computed_tokens
        result = super().execute(out)  # writes every token of the step, as each layer does before attention
        for rid, n in out.num_scheduled_tokens.items():
            toks, table = self.tokens[rid], self.tables[rid]
            for pos in range(starts[rid], starts[rid] + n):
                for key in range(max(0, pos - self.window + 1), pos + 1):
                    assert self.slots.get((table[key // BS], key % BS)) == toks[key], f"{rid} query {pos} key {key}"
                    self.reads_checked += 1
        return result


def play(sched: Scheduler, driver: Driver, ops: list[tuple], after_step=None, capacity: int | None = None) -> None:
    """Plays drawn operations on a scheduler: ("add", prefix, extra tokens, max_tokens), ("abort", i),
    ("step", n); ``after_step`` checks whatever must hold after each step. A request longer than
    ``capacity`` tokens is not added (the engine refuses it before the scheduler sees it)."""
    added = 0
    for op in ops:
        if op[0] == "add":
            _, prefix, extra, max_tokens = op
            prompt = PREFIXES[prefix] + [40 + added % 7 + i for i in range(extra)]
            if capacity is not None and len(prompt) + max_tokens > capacity:
                continue
            sched.add_request(_request(added, prompt, max_tokens, 0))
            added += 1
        elif op[0] == "abort":
            sched.abort(f"r{op[1] % max(added, 1)}")
        else:
            for _ in range(op[1]):
                if driver.busy():
                    driver.step()
                    if after_step is not None:
                        after_step()


operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 2), st.integers(0, 10), st.integers(1, 14)),
    st.tuples(st.just("abort"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.integers(1, 3)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=40), st.booleans(), st.sampled_from([1, 3, 5, 9]), st.integers(6, 12),
       st.integers(3, 10))
def test_no_query_reads_a_slot_reused_after_its_block_was_given_back(ops, asynchronous, window, num_blocks, budget):
    kv = KVCacheManager(num_blocks, BS, sliding_window=window)
    sched = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=40)
    runner = WindowCheckingRunner(window)
    driver = Driver(sched, runner, asynchronous)

    def bounded() -> None:
        for rid in kv.req_blocks:
            assert kv.num_held_blocks(rid) <= held_bound(window, budget)

    play(sched, driver, ops, after_step=bounded)
    driver.finish()
    assert kv.pool.num_used_blocks == 0 and kv.num_allocated_blocks == 0


def random_checkpoint(cfg, path):
    """A transformers model of ``cfg`` with every weight random (seeded), saved at ``path``; returned."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.08)
    hf.save_pretrained(path)
    return hf


def run_greedy(llm: LLM, prompts: list[list[int]], new: int) -> tuple[list[list[int]], int]:
    """Each prompt's ``new`` greedy tokens through the engine, and the most KV blocks in use at once."""
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"q{i}", {"prompt_token_ids": p}, params)
    done, peak = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
        peak = max(peak, engine.kv.pool.num_used_blocks)
    return [done[f"q{i}"] for i in range(len(prompts))], peak


def test_engine_serves_contexts_several_windows_long_within_a_bounded_pool(tmp_path):
    """Mistral-style model, window 6, 16 blocks of 4 (64 slots): two requests of 10 + 50 tokens
    would need 30 blocks without freeing; with it neither is preempted, the blocks in use stay
    bounded, and both produce transformers' greedy tokens (so no reused block was read)."""
    cfg = MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=211, max_position_embeddings=128, sliding_window=6)
    hf = random_checkpoint(cfg, tmp_path)
    rng = random.Random(7)
    prompts = [[rng.randrange(211) for _ in range(10)] for _ in range(2)]
    new = 50
    expected = []
    with torch.no_grad():
        for ids in prompts:  # transformers' greedy decoding with its own (sliding-window) cache
            out = hf(input_ids=torch.tensor([ids]), use_cache=True)
            seq = [int(out.logits[0, -1].argmax())]
            while len(seq) < new:
                out = hf(input_ids=torch.tensor([seq[-1:]]), cache=out.past_key_values, use_cache=True)
                seq.append(int(out.logits[0, -1].argmax()))
            expected.append(seq)
    llm = LLM(model=str(tmp_path), device="cpu", dtype="float32", block_size=BS, num_kv_blocks=16, max_model_len=64,
              max_num_batched_tokens=8, async_scheduling=False)
    got, peak = run_greedy(llm, prompts, new)
    assert got == expected
    assert llm.engine.scheduler.num_preemptions == 0
    assert peak <= 2 * held_bound(6, 8) < 30
