"""The fair-share scheduler alone, at the H200 fairness benchmark's shape: 256 seats, an 8,192-token step
budget, 256-token prompts asking for 128 tokens. No model: every scheduled request whose prompt is done
gets one token per step. Prints (1) how many steps a lone team's request waits for its first token while
a flooding team holds every seat with 1,024 more queued, and (2) the served shares of two backlogged
teams of weights 1 and 2. Separates the scheduler's behaviour from the serving layer's.

    python bench/fair_share_sim.py
"""
from __future__ import annotations

from ward.benchmarks.modelless_runner import ModellessRunner
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.request import Request
from worker.engine.scheduler import Scheduler
from worker.sampling_params import SamplingParams

SEATS, BUDGET, PROMPT, OUTPUT, BLOCK = 256, 8192, 256, 128, 16


class Sim:
    def __init__(self) -> None:
        self.sched = Scheduler(KVCacheManager(100_000, BLOCK), max_num_seqs=SEATS, max_num_batched_tokens=BUDGET,
                               max_model_len=4096)
        self.runner = ModellessRunner()
        self.count = 0

    def add(self, team: str, weight: float) -> Request:
        self.count += 1
        r = Request(f"{team}-{self.count}", [100 + (self.count * 7 + i) % 30000 for i in range(PROMPT)],
                    SamplingParams(max_tokens=OUTPUT, ignore_eos=True), max_tokens=OUTPUT, block_size=BLOCK,
                    arrival_time=float(self.count), team=team, team_weight=weight)
        self.sched.add_request(r)
        return r

    def keep_waiting(self, team: str, weight: float, n: int) -> None:
        account = self.sched.fair.teams.get(team)
        while account is None or len(account.waiting) < n:
            self.add(team, weight)
            account = self.sched.fair.teams[team]

    def step(self) -> None:
        out = self.sched.schedule()
        self.sched.update_from_output(out, self.runner.execute(out))


def lone_request_wait() -> tuple[int, int]:
    sim = Sim()
    for _ in range(300):  # the flood settles: every seat taken, 1,024 queued
        sim.keep_waiting("a", 1.0, 1024)
        sim.step()
    lone = sim.add("b", 2.0)
    for steps in range(1, 1000):
        sim.keep_waiting("a", 1.0, 1024)
        sim.step()
        if lone.num_output_tokens:
            return steps, sim.sched.num_preemptions
    raise RuntimeError("the lone request never got a token")


def backlogged_shares() -> dict[str, float]:
    sim = Sim()
    base: dict[str, float] = {}
    for i in range(1500):
        sim.keep_waiting("a", 1.0, 512)
        sim.keep_waiting("b", 2.0, 512)
        sim.step()
        if i == 500:
            base = {t: sim.sched.fair.teams[t].served_tokens for t in "ab"}
    served = {t: sim.sched.fair.teams[t].served_tokens - base[t] for t in "ab"}
    return {t: round(v / sum(served.values()), 3) for t, v in served.items()}


if __name__ == "__main__":
    steps, preemptions = lone_request_wait()
    print(f"lone request beside a flood holding {SEATS} seats: first token after {steps} step(s), "
          f"{preemptions} preemption(s)")
    print(f"backlogged teams of weights 1 and 2: shares {backlogged_shares()} (weights' shares 0.333 / 0.667)")
