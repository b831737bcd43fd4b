"""The prefix cache only ever hands out blocks whose K/V was computed, whatever frees or preempts them:
the issue's same-step preemption on the real default model, and a property over random schedules."""
from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from worker import LLM, SamplingParams
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.request import Request
from worker.engine.scheduler import Scheduler
from worker.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput

BS = 4


def _greedy(engine, request_id: str) -> list[int]:
    done: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
    return done[request_id]


def test_a_request_preempted_in_the_step_that_scheduled_it_leaves_no_unwritten_block_findable(default_model_dir):
    """Two prompts share 16 tokens; the first (priority 5) is mid-prefill when the second (priority 0)
    arrives, finds no free block and preempts it in the same step that had just scheduled the first's
    next chunk. Blocks of that chunk were never written: the second must not find them."""
    settings_ = dict(model=default_model_dir, device="cpu", block_size=BS, num_kv_blocks=5,
                     max_num_batched_tokens=12, max_model_len=64, async_scheduling=False)
    llm = LLM(**settings_)
    tok = llm.get_tokenizer()
    shared = tok.encode("The ward round starts at eight, and the night nurse hands over every patient on the list "
                        "before the consultant arrives.")[:16]
    assert len(shared) == 16
    first, second = shared + [tok.encode(" first")[0]] * 2, shared + [tok.encode(" second")[0]] * 2
    params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)

    alone = LLM(**settings_).engine
    alone.add_request("second", {"prompt_token_ids": second}, params)
    expected = _greedy(alone, "second")

    engine = llm.engine
    engine.add_request("first", {"prompt_token_ids": first}, params, priority=5)
    engine.step()  # the first's first chunk: 12 tokens, 3 blocks
    engine.add_request("second", {"prompt_token_ids": second}, params, priority=0)
    got = _greedy(engine, "second")
    assert engine.scheduler.num_preemptions >= 1, "the scenario must preempt the first request"
    assert got == expected


# ---- property: every prefix-cache hit reads K/V that a launched step wrote ---------------------------

class SlotWritingRunner:
    """Plays the model runner: remembers which token each (block, offset) slot was written with, and
    checks every hit a new request is given against it. Samples a deterministic function of the tokens."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[int]] = {}
        self.tables: dict[str, list[int]] = {}
        self.computed: dict[str, int] = {}
        self.slots: dict[tuple[int, int], int] = {}
        self.hits_checked = 0

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        for rid in out.freed_req_ids:
            self.tokens.pop(rid, None)
            self.tables.pop(rid, None)
        for new in out.new_reqs:
            self.tokens[new.req_id] = list(new.token_ids)
            self.tables[new.req_id] = list(new.block_ids)
            for pos in range(new.num_computed_tokens):  # the prefix-cache hit: it must hold these tokens
                slot = (new.block_ids[pos // BS], pos % BS)
                assert self.slots.get(slot) == new.token_ids[pos], f"hit on an unwritten slot {slot} for {new.req_id}"
                self.hits_checked += 1
            self.computed[new.req_id] = new.num_computed_tokens
        for c in out.cached_reqs:
            self.tables[c.req_id].extend(c.new_block_ids)
            self.computed[c.req_id] = c.num_computed_tokens
        sampled = {}
        for rid, n in out.num_scheduled_tokens.items():
            toks, table, start = self.tokens[rid], self.tables[rid], self.computed[rid]
            for pos in range(start, start + n):
                self.slots[(table[pos // BS], pos % BS)] = toks[pos]
            self.computed[rid] = start + n
            if start + n >= len(toks):
                t = (sum(toks) * 31 + len(toks)) % 97 + 1
                toks.append(t)
                sampled[rid] = [t]
        return ModelRunnerOutput(sampled)


class Driver:
    """Steps a scheduler against the runner as the engine does; asynchronous: step N+1 is scheduled (and
    run) before step N's sampled tokens are applied."""

    def __init__(self, sched: Scheduler, runner: SlotWritingRunner, asynchronous: bool) -> None:
        self.sched, self.runner, self.asynchronous = sched, runner, asynchronous
        self.inflight: tuple[SchedulerOutput, ModelRunnerOutput] | None = None

    def busy(self) -> bool:
        return self.sched.has_unfinished() or self.inflight is not None

    def step(self) -> None:
        out = self.sched.schedule()
        result = self.runner.execute(out)
        if not self.asynchronous:
            self.sched.update_from_output(out, result)
            return
        if self.inflight is not None:
            self.sched.update_from_output(*self.inflight)
        self.inflight = (out, result) if not out.is_empty else None

    def finish(self, max_steps: int = 500) -> None:
        for _ in range(max_steps):
            if not self.busy():
                return
            self.step()
        raise AssertionError("the schedule did not finish")


PREFIXES = [[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 7, 8, 20, 21, 22, 23], [30, 31, 32, 33, 34, 35, 36, 37]]

operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 2), st.integers(0, 6), st.integers(-2, 2), st.integers(1, 6),
              st.integers(0, 1)),
    st.tuples(st.just("abort"), st.integers(0, 50)),
    st.tuples(st.just("step"), st.integers(1, 3)),
)


def _request(i: int, prompt: list[int], max_tokens: int, priority: int, team: int = 0) -> Request:
    return Request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), max_tokens=max_tokens,
                   block_size=BS, priority=priority, arrival_time=float(i), team=f"team-{team}")


# Two teams on six blocks: each admission evicted the other's request, which was admitted again in the
# same step (an endless schedule() before evicted requests waited for the next step).
@example(ops=[("add", 1, 2, 0, 2, 1), ("add", 0, 0, 2, 1, 0), ("add", 1, 2, 0, 1, 1), ("add", 0, 4, 0, 5, 0)],
         asynchronous=False, num_blocks=6, budget=10)
@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=60), st.booleans(), st.integers(6, 14), st.integers(3, 16))
def test_every_prefix_cache_hit_reads_computed_kv(ops, asynchronous, num_blocks, budget):
    """Random adds (shared prefixes, two teams, client priorities), aborts and steps on a tiny pool, with
    chunked prefill, preemptions and (optionally) the asynchronous mode's one step in flight."""
    sched = Scheduler(KVCacheManager(num_blocks, BS), max_num_seqs=4, max_num_batched_tokens=budget, max_model_len=40)
    driver = Driver(sched, SlotWritingRunner(), asynchronous)
    added = 0
    for op in ops:
        if op[0] == "add":
            _, prefix, extra, priority, max_tokens, team = op
            prompt = PREFIXES[prefix] + [40 + added % 7 + i for i in range(extra)]
            sched.add_request(_request(added, prompt, max_tokens, priority, team))
            added += 1
        elif op[0] == "abort":
            sched.abort(f"r{op[1] % max(added, 1)}")
        else:
            for _ in range(op[1]):
                if driver.busy():
                    driver.step()
    driver.finish()
    assert sched.kv.pool.num_used_blocks == 0


@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_property_exercises_hits_and_preemptions(asynchronous):
    """The random schedules above are not vacuous: this fixed one has both hits and preemptions."""
    sched = Scheduler(KVCacheManager(5, BS), max_num_seqs=4, max_num_batched_tokens=12, max_model_len=40)
    runner = SlotWritingRunner()
    driver = Driver(sched, runner, asynchronous)
    for i, priority in enumerate([5, 0, 0, 3]):
        sched.add_request(_request(i, PREFIXES[i % 3] + [50 + i] * 3, 4, priority))
        driver.step()
        driver.step()
    driver.finish()
    assert runner.hits_checked > 0 and sched.num_preemptions > 0
