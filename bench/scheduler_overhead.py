"""CPU time of the scheduler per step (schedule + update_from_output) on a synthetic steady state: 256 running
decodes, 1,000 waiting requests, spread over 1, 4 or 32 teams, a runner that does no work. Prints one line
per team count, then one for Gemma 3 27B's KV layout (a global group and six sliding groups of window
1,024, one team). Compare two versions of the code side by side with PYTHONPATH:

    PYTHONPATH=OLD_CHECKOUT python bench/scheduler_overhead.py; PYTHONPATH=. python bench/scheduler_overhead.py
"""
from __future__ import annotations

import inspect
import statistics
import time

from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.request import Request
from worker.engine.scheduler import Scheduler
from worker.engine.scheduler_output import ModelRunnerOutput
from worker.sampling_params import SamplingParams

BS = 16
HAS_TEAMS = "team" in inspect.signature(Request).parameters


def make(i: int, team: int) -> Request:
    kw = {"team": f"team-{team}"} if HAS_TEAMS else {}
    return Request(f"r{i}", [1000 + (i * 31 + j) % 5000 for j in range(256)], SamplingParams(max_tokens=10**6,
                   ignore_eos=True), max_tokens=10**6, block_size=BS, arrival_time=float(i), **kw)


def measure(num_teams: int, steps: int = 300, kv=None) -> float:
    kv = kv if kv is not None else KVCacheManager(40_000, BS)
    sched = Scheduler(kv, max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=8192)
    for i in range(256 + 1000):
        sched.add_request(make(i, i % num_teams))
    times = []
    for step in range(steps + 20):
        t = time.perf_counter()
        out = sched.schedule()
        sampled = {rid: [7] for rid, n in out.num_scheduled_tokens.items()
                   if sched.requests[rid].num_computed_tokens >= sched.requests[rid].num_tokens}
        sched.update_from_output(out, ModelRunnerOutput(sampled))
        if step >= 20:  # the prefills are done: a steady decode state with a full waiting queue
            times.append(time.perf_counter() - t)
    return statistics.median(times)


if __name__ == "__main__":
    for teams in (1, 4, 32):
        print(f"teams {teams:>2}: {1e6 * measure(teams):8.1f} us per step (median)", flush=True)
    try:
        from worker.engine.hybrid_kv_cache_manager import HybridKVCacheManager
    except ImportError:  # an older checkout
        raise SystemExit(0)
    kv = HybridKVCacheManager(7 * 40_000, BS, (None,) + (1024,) * 6)
    print(f"gemma-3 groups, teams 1: {1e6 * measure(1, kv=kv):8.1f} us per step (median)", flush=True)
