"""Continuous batching in plain Python, with a fake runner that keeps state the way the real one does."""
from __future__ import annotations

from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.request import Request
from worker.engine.scheduler import Scheduler
from worker.engine.scheduler_output import ModelRunnerOutput, SchedulerOutput
from worker.sampling_params import SamplingParams

BS = 4


class FakeRunner:
    """Keeps each request's tokens from the scheduler's plain data; 'samples' a deterministic
    function of the tokens so far, so recomputation must reproduce the same continuation."""

    def __init__(self):
        self.tokens: dict[str, list[int]] = {}
        self.computed: dict[str, int] = {}

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        for rid in out.freed_req_ids:
            self.tokens.pop(rid, None)
        for new in out.new_reqs:
            self.tokens[new.req_id] = list(new.token_ids)
            self.computed[new.req_id] = new.num_computed_tokens
        for c in out.cached_reqs:
            assert c.req_id in self.tokens, "scheduled a request the runner does not hold"
            self.computed[c.req_id] = c.num_computed_tokens
        sampled = {}
        for rid, n in out.num_scheduled_tokens.items():
            toks = self.tokens[rid]
            if self.computed[rid] + n >= len(toks):
                t = (sum(toks) * 31 + len(toks)) % 997
                toks.append(t)
                sampled[rid] = [t]
        return ModelRunnerOutput(sampled)


def make_scheduler(num_blocks=64, budget=32, max_seqs=8, max_len=256):
    kv = KVCacheManager(num_blocks, BS)
    return Scheduler(kv, max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=max_len)


def req(rid, n_prompt, max_tokens=5, priority=0, arrival=None, seed=0):
    prompt = [(seed * 13 + i) % 500 + 1 for i in range(n_prompt)]
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), max_tokens=max_tokens,
                   block_size=BS, priority=priority, arrival_time=arrival)


def run_to_end(s: Scheduler, runner: FakeRunner, max_steps=1000):
    finished = {}
    steps = []
    for _ in range(max_steps):
        if not s.has_unfinished():
            break
        out = s.schedule()
        steps.append(out)
        for co in s.update_from_output(out, runner.execute(out)):
            finished.setdefault(co.req_id, []).extend(co.new_token_ids)
    return finished, steps


def test_prefill_is_chunked_by_the_token_budget_and_decodes_go_first():
    s, r = make_scheduler(budget=10), FakeRunner()
    s.add_request(req("long", 25))
    out1 = s.schedule()
    assert out1.num_scheduled_tokens == {"long": 10}
    s.update_from_output(out1, r.execute(out1))
    s.add_request(req("short", 3, arrival=1e12))
    out2 = s.schedule()
    assert out2.num_scheduled_tokens == {"long": 10}  # running first, budget used up
    s.update_from_output(out2, r.execute(out2))
    out3 = s.schedule()
    assert out3.num_scheduled_tokens == {"long": 5, "short": 3}
    s.update_from_output(out3, r.execute(out3))
    out4 = s.schedule()
    assert out4.num_scheduled_tokens == {"long": 1, "short": 1}  # both decoding now


def test_finished_requests_leave_at_once_and_free_their_blocks():
    s, r = make_scheduler(), FakeRunner()
    s.add_request(req("a", 6, max_tokens=2))
    s.add_request(req("b", 6, max_tokens=4))
    done, _ = run_to_end(s, r)
    assert len(done["a"]) == 2 and len(done["b"]) == 4
    assert s.kv.pool.num_used_blocks == 0
    assert not s.running and not s.waiting


def test_max_num_seqs_caps_the_running_batch():
    s = make_scheduler(max_seqs=2, budget=100)
    for i in range(5):
        s.add_request(req(f"r{i}", 4, arrival=i))
    out = s.schedule()
    assert sorted(out.num_scheduled_tokens) == ["r0", "r1"]


def test_priority_orders_admission_lower_value_first():
    s = make_scheduler(max_seqs=1, budget=100)
    s.add_request(req("late-urgent", 4, priority=-5, arrival=2))
    s.add_request(req("early", 4, priority=0, arrival=1))
    out = s.schedule()
    assert list(out.num_scheduled_tokens) == ["late-urgent"]


def test_preemption_by_recompute_picks_the_latest_request_and_output_is_identical():
    # Reference: enough blocks for everyone.
    ref_s, ref_r = make_scheduler(num_blocks=64, budget=64), FakeRunner()
    for i in range(4):
        ref_s.add_request(req(f"r{i}", 6, max_tokens=12, arrival=i, seed=i))
    expected, _ = run_to_end(ref_s, ref_r)
    assert ref_s.num_preemptions == 0

    s, r = make_scheduler(num_blocks=12, budget=64), FakeRunner()
    for i in range(4):
        s.add_request(req(f"r{i}", 6, max_tokens=12, arrival=i, seed=i))
    got, steps = run_to_end(s, r)
    assert s.num_preemptions > 0
    first_preempted = next(out.freed_req_ids for out in steps if out.freed_req_ids)
    assert first_preempted == {"r3"}  # the latest arrival goes first
    assert got == expected
    assert s.kv.pool.num_used_blocks == 0


def test_preemption_respects_priority_over_arrival():
    s, r = make_scheduler(num_blocks=9, budget=64), FakeRunner()
    s.add_request(req("important-late", 6, max_tokens=12, priority=-1, arrival=5, seed=1))
    s.add_request(req("normal-early", 6, max_tokens=12, priority=0, arrival=1, seed=2))
    s.add_request(req("normal-mid", 6, max_tokens=12, priority=0, arrival=2, seed=3))
    _, steps = run_to_end(s, r)
    assert s.num_preemptions > 0
    first_freed = next(out.freed_req_ids for out in steps if out.freed_req_ids)
    assert first_freed == {"normal-mid"}  # lowest priority, then latest arrival


def test_abort_frees_everything_at_once_running_or_waiting():
    s, r = make_scheduler(max_seqs=1), FakeRunner()
    s.add_request(req("run", 10, max_tokens=50))
    s.add_request(req("wait", 10, max_tokens=50, arrival=1e12))
    out = s.schedule()
    s.update_from_output(out, r.execute(out))
    assert s.kv.pool.num_used_blocks > 0
    assert sorted(s.abort(["run", "wait", "unknown"])) == ["run", "wait"]
    assert s.kv.pool.num_used_blocks == 0
    assert not s.has_unfinished()
    assert s.schedule().freed_req_ids == {"run", "wait"}


def test_new_requests_join_the_running_batch_at_the_next_step():
    s, r = make_scheduler(budget=100), FakeRunner()
    s.add_request(req("a", 4, max_tokens=10))
    out = s.schedule()
    s.update_from_output(out, r.execute(out))
    s.add_request(req("b", 4, max_tokens=10, arrival=1e12))
    out = s.schedule()
    assert out.num_scheduled_tokens == {"a": 1, "b": 4}
    assert [n.req_id for n in out.new_reqs] == ["b"] and [c.req_id for c in out.cached_reqs] == ["a"]


def test_siblings_wait_for_the_first_choice_prefill_and_then_share_its_blocks():
    s, r = make_scheduler(budget=100), FakeRunner()
    lead = req("x#0", 13, max_tokens=3)
    sib = Request("x#1", list(lead.token_ids), lead.sampling_params, max_tokens=3, block_size=BS, wait_for="x#0")
    s.add_request(lead)
    s.add_request(sib)
    out = s.schedule()
    assert list(out.num_scheduled_tokens) == ["x#0"]
    s.update_from_output(out, r.execute(out))
    out = s.schedule()
    assert out.num_scheduled_tokens["x#1"] == 1  # 12 of 13 prompt tokens came from x#0's blocks
    shared = set(s.kv.get_block_ids("x#0")[:3])
    assert shared == set(s.kv.get_block_ids("x#1")[:3])
    assert all(s.kv.pool.blocks[b].ref_cnt == 2 for b in shared)


def test_length_limit_from_max_model_len():
    s, r = make_scheduler(max_len=10), FakeRunner()
    s.add_request(req("a", 8, max_tokens=100))
    done, _ = run_to_end(s, r)
    assert len(done["a"]) == 2


def test_decode_step_tokens_caps_a_step_only_while_a_request_is_decoding():
    kv = KVCacheManager(64, BS)
    s = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=32, max_model_len=256, decode_step_tokens=8)
    r = FakeRunner()
    s.add_request(req("first", 40, max_tokens=20))
    out = s.schedule()
    assert out.num_scheduled_tokens == {"first": 32}  # nothing decoding yet: the whole budget
    s.update_from_output(out, r.execute(out))
    out = s.schedule()
    assert out.num_scheduled_tokens == {"first": 8}  # the rest of its prompt
    s.update_from_output(out, r.execute(out))
    s.add_request(req("second", 40, max_tokens=5, seed=1, arrival=1e12))
    out = s.schedule()
    assert out.num_scheduled_tokens == {"first": 1, "second": 7}  # first decodes: 8 tokens in all
    s.update_from_output(out, r.execute(out))
    finished, steps = run_to_end(s, r)
    assert all(sum(o.num_scheduled_tokens.values()) <= 8 for o in steps if "first" in o.num_scheduled_tokens)
    assert len(finished["second"]) == 5


def test_decode_step_tokens_must_be_positive():
    import pytest

    with pytest.raises(ValueError, match="decode_step_tokens"):
        Scheduler(KVCacheManager(8, BS), max_num_seqs=1, max_num_batched_tokens=8, max_model_len=64,
                  decode_step_tokens=0)


def test_the_worker_caps_decode_steps_at_2048_by_default_and_0_turns_the_cap_off():
    import argparse

    from worker.server.cli import add_arguments, engine_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default = engine_config(parser.parse_args(["--model", "m"]), "m")
    assert (default.decode_step_tokens, default.max_num_batched_tokens) == (2048, 8192)
    assert engine_config(parser.parse_args(["--model", "m", "--decode-step-tokens", "0"]), "m").decode_step_tokens is None
