"""Weighted fair share between teams in the scheduler (Virtual Token Counter with admin classes)."""
from __future__ import annotations

import pytest

from ward.benchmarks.modelless_runner import ModellessRunner
from worker.engine.fair_share import DECODE_COST, PREFILL_COST, FairShare, check_policy
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.request import Request
from worker.engine.scheduler import Scheduler
from worker.engine.scheduler_output import SchedulerOutput
from worker.sampling_params import SamplingParams

BS = 4


class Bench:
    def __init__(self, num_blocks=256, budget=16, max_seqs=4) -> None:
        self.sched = Scheduler(KVCacheManager(num_blocks, BS), max_num_seqs=max_seqs,
                               max_num_batched_tokens=budget, max_model_len=512)
        self.runner = ModellessRunner()
        self.count = 0

    def add(self, team: str, *, weight=1.0, team_priority=0, priority=0, prompt=8, out=8) -> Request:
        self.count += 1
        r = Request(f"{team}-{self.count}", [100 + (self.count * 7 + i) % 300 for i in range(prompt)],
                    SamplingParams(max_tokens=out, ignore_eos=True), max_tokens=out, block_size=BS,
                    priority=priority, arrival_time=float(self.count), team=team, team_priority=team_priority,
                    team_weight=weight)
        self.sched.add_request(r)
        return r

    def step(self) -> SchedulerOutput:
        out = self.sched.schedule()
        self.sched.update_from_output(out, self.runner.execute(out))
        return out

    def served(self, team: str) -> float:
        return self.sched.fair.teams[team].served_tokens

    def waiting(self, team: str) -> int:
        return len(self.sched.fair.teams[team].waiting) if team in self.sched.fair.teams else 0


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 3.0), (2.0, 1.0)])
def test_saturating_teams_share_served_tokens_by_weight_within_ten_percent(weights):
    b = Bench()
    wa, wb = weights
    for _ in range(400):
        for team, w in (("a", wa), ("b", wb)):
            while b.waiting(team) < 6:  # both teams always backlogged
                b.add(team, weight=w)
        b.step()
    total = b.served("a") + b.served("b")
    for team, w in (("a", wa), ("b", wb)):
        share, target = b.served(team) / total, w / (wa + wb)
        assert abs(share / target - 1) <= 0.10, (team, share, target)


def test_a_team_alone_gets_the_whole_engine_whatever_its_weight():
    b = Bench(max_seqs=4, budget=64)
    for _ in range(12):
        b.add("alone", weight=0.01)
    out = b.step()
    assert len(out.num_scheduled_tokens) == 4  # every seat taken
    for _ in range(3):
        assert len(b.step().num_scheduled_tokens) == 4


def test_a_team_back_from_idleness_banks_no_credit():
    b = Bench()
    for _ in range(200):  # a runs alone for a long time; b has no counter to speak of
        while b.waiting("a") < 6:
            b.add("a")
        b.step()
    fair = b.sched.fair
    b.add("b")
    assert fair.teams["b"].counter == pytest.approx(fair.teams["a"].counter)  # lifted, not left at 0
    before_a, before_b = b.served("a"), b.served("b")
    for _ in range(200):
        for team in ("a", "b"):
            while b.waiting(team) < 6:
                b.add(team)
        b.step()
    gained_a, gained_b = b.served("a") - before_a, b.served("b") - before_b
    assert abs(gained_a / (gained_a + gained_b) - 0.5) <= 0.05  # not starved by b's idle history


def test_a_more_urgent_class_is_admitted_first_whatever_the_counters():
    b = Bench(max_seqs=1, budget=64)
    normal = b.add("ward", out=2)
    urgent = b.add("emergency", team_priority=-1, out=2)
    b.sched.fair.teams["emergency"].counter = 1e9  # far above its share: the class still comes first
    out = b.step()
    assert list(out.num_scheduled_tokens) == [urgent.request_id]
    assert normal.request_id not in out.num_scheduled_tokens


def test_a_clients_priority_never_overtakes_another_team():
    b = Bench(max_seqs=1, budget=64)
    for _ in range(30):  # team a has had far more service than team b
        while b.waiting("a") < 2:
            b.add("a", out=4)
        b.step()
    b.add("b", out=4)
    pushy = b.add("a", priority=-(2**31), out=4)
    while len(b.sched.running) >= 1:
        b.step()
    out = b.step()
    admitted = [r.req_id for r in out.new_reqs]
    assert admitted and admitted[0].startswith("b-") and pushy.request_id not in admitted


def test_a_clients_priority_never_preempts_another_team():
    # 5 blocks: team b's running request holds 3 (4 by its end); a's pushy request needs 3
    b = Bench(num_blocks=5, budget=64, max_seqs=4)
    victim = b.add("b", prompt=12, out=4)
    b.step()
    pushy = b.add("a", priority=-(2**31), prompt=12, out=4)
    while victim.num_output_tokens < 4:
        b.step()
        assert b.sched.num_preemptions == 0 and pushy in b.sched.waiting
    b.step()
    assert pushy in b.sched.running  # it runs once b's request is done


def test_within_a_team_the_clients_priority_may_preempt():
    b = Bench(num_blocks=3, budget=64, max_seqs=4)
    low = b.add("a", priority=5, prompt=8, out=4)
    b.step()
    b.add("a", priority=0, prompt=8, out=4)
    b.step()
    assert b.sched.num_preemptions == 1 and low in b.sched.waiting


def test_preemption_takes_the_victim_from_the_team_furthest_above_its_share():
    b = Bench(num_blocks=9, budget=64, max_seqs=4)
    heavy = b.add("heavy", prompt=8, out=12)
    light = b.add("light", prompt=8, out=12)
    b.step()
    b.sched.fair.teams["heavy"].counter += 1000  # heavy has had far more than its share
    freed = set()
    for _ in range(12):
        out = b.step()
        freed |= out.freed_req_ids
        if b.sched.num_preemptions:
            break
    assert b.sched.num_preemptions >= 1
    assert heavy.request_id in freed and light.request_id not in freed


def test_costs_count_prefill_once_and_decode_twice():
    fair = FairShare()
    r = Request("r", [1] * 10, SamplingParams(max_tokens=4), max_tokens=4, block_size=BS, team="t", team_weight=2.0)
    fair.push_waiting(r)
    assert fair.charge(r, 6) == 6 * PREFILL_COST  # tokens 0..5 are prompt
    r.num_computed_tokens = 6
    assert fair.charge(r, 5) == 4 * PREFILL_COST + 1 * DECODE_COST
    assert fair.teams["t"].counter == pytest.approx((6 + 4 + 2) / 2.0)


@pytest.mark.parametrize("priority, weight", [(0, 0.0), (0, -1.0), (0, float("nan")), (0, float("inf")), (1.5, 1.0),
                                              (True, 1.0)])
def test_a_policy_the_scheduler_cannot_honour_is_refused(priority, weight):
    with pytest.raises(ValueError):
        check_policy(priority, weight)


def test_a_lone_request_takes_a_seat_from_a_flood_holding_every_seat():
    b = Bench(max_seqs=4, budget=64)
    for _ in range(8):
        b.add("flood", out=200)
    for _ in range(5):
        b.step()
    assert len(b.sched.running) == 4
    lone = b.add("lone", out=4)
    out = b.step()
    assert lone.request_id in [r.req_id for r in out.new_reqs]
    assert b.sched.num_preemptions == 1 and sum(r.team == "flood" for r in b.sched.running) == 3
    while lone.num_output_tokens < 4:  # it runs to its end while the flood keeps its other seats
        b.step()
    assert b.sched.num_preemptions == 1


def test_teams_that_both_run_never_preempt_each_other_for_share():
    b = Bench(max_seqs=4, budget=64)
    for team in ("a", "a", "b", "b", "a", "b"):
        b.add(team, out=40)
    for _ in range(60):
        b.step()
        assert b.sched.num_preemptions == 0


def test_a_single_running_request_is_never_preempted_for_share():
    b = Bench(max_seqs=1, budget=64)
    only = b.add("a", out=30)
    for _ in range(10):
        b.step()
    b.add("b", out=4)
    while only.num_output_tokens < 30:
        b.step()
        assert b.sched.num_preemptions == 0


def test_after_the_engine_idles_past_service_is_no_debt():
    b = Bench()
    for _ in range(200):  # a has the engine to itself for a long time, then everything ends
        while b.waiting("a") < 6:
            b.add("a", out=4)
        b.step()
    while b.sched.running or b.sched.fair.num_waiting:
        b.step()
    b.add("b", weight=2.0)  # b comes back first, into an idle engine, then a
    b.add("a")
    fair = b.sched.fair
    assert fair.teams["a"].counter == pytest.approx(fair.teams["b"].counter)  # level: no debt, no credit
    before = {t: b.served(t) for t in "ab"}
    for _ in range(300):
        b.add("a") if b.waiting("a") < 6 else None
        while b.waiting("b") < 6:
            b.add("b", weight=2.0)
        b.step()
    gained = {t: b.served(t) - before[t] for t in "ab"}
    assert abs(gained["a"] / sum(gained.values()) - 1 / 3) <= 0.05  # by the weights from the first step
