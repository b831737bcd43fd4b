"""Whether the host keeps the GPU busy in steady decode as the batch grows: for each batch size, the
kernel time over the wall time of 30 decode steps (torch profiler) and the host time a step spends in
the scheduler (schedule + update_from_output). A script, not a test.
Usage: python bench/decode_busy.py [--model llama-3.1-8b] [--batches 64,256,512,768] [--prompt 384]"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ward.benchmarks.models import write_config_dir
from ward.benchmarks.offline import OfflineBench, _sync
from worker import LLM


# kernels only: recording host ops too would slow the host this measures (CPU: a smoke run)
ACTIVITIES = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]


class SchedulerClock:
    """Adds up the wall time spent in the scheduler's two per-step calls."""

    def __init__(self, scheduler) -> None:
        self.seconds = 0.0
        for name in ("schedule", "update_from_output"):
            setattr(scheduler, name, self._timed(getattr(scheduler, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
        return timed


def host_profile(engine, steps: int) -> str:
    """The host functions of ``steps`` engine steps by cumulative time (waits on the device included)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        engine.step()
    _sync()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    return text.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--batches", default="64,256,512,768")
    ap.add_argument("--prompt", type=int, default=384)
    ap.add_argument("--cprofile", action="store_true",
                    help="after each batch's timing, 30 more steps under cProfile: where the host's time goes")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    llm = LLM(model=write_config_dir(args.model, tempfile.mkdtemp(prefix="ward-busy-")), load_format="dummy",
              dtype="bfloat16", max_model_len=4096, max_num_seqs=max(batches), max_num_batched_tokens=16384)
    bench = OfflineBench(llm)
    bench.warmup()
    engine = llm.engine
    clock = SchedulerClock(engine.scheduler)
    rows = []
    for batch in batches:
        with bench.steady_decode(batch, args.prompt, steps=60):  # 30 timed, 30 more under --cprofile
            before = clock.seconds
            with profile(activities=ACTIVITIES) as prof:
                t = time.perf_counter()
                for _ in range(30):
                    engine.step()
                _sync()
                wall = time.perf_counter() - t
            kernel_s = sum(e.device_time for e in prof.events() if e.device_type.name == "CUDA") / 1e6
            scheduler_s = clock.seconds - before
            if args.cprofile:
                print(host_profile(engine, steps=30), flush=True)
        rows.append({"batch": batch, "step_ms": round(1000 * wall / 30, 3), "busy_fraction": round(kernel_s / wall, 4),
                     "scheduler_ms_per_step": round(1000 * scheduler_s / 30, 3)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"decode_busy": rows}))


if __name__ == "__main__":
    main()
