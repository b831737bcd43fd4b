"""What the garbage collector costs a serving worker: ``ward worker`` (the default model, CPU) as a
real process under a closed loop of streamed Generate calls over gRPC, with its start-up heap frozen
(the default) and not (WARD_GC_FREEZE=0), one after the other. Reports each run's collections and
pauses by generation (the worker's own ward_worker_gc_pause_seconds) and the gaps between tokens as
the client saw them; then, in this process beside a started engine, what one full collection costs and
which collections --in-process-requests short generations cause, before and after the freeze. A
script, not a test.

    python bench/worker_gc.py [--seconds 60] [--streams 16] [--tokens 64] [--in-process-requests 3000] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import subprocess
import sys
import time

import grpc
import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proto.ward.worker.v1 import worker_pb2 as pb  # noqa: E402
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402
from ward.benchmarks.serving import scrape_gc  # noqa: E402
from ward.benchmarks.stack import free_port, worker_ready_port  # noqa: E402
from worker.model.registry import DEFAULT_GENERATE_MODEL, resolve_model  # noqa: E402


def start_worker(freeze: bool, metrics_port: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "WARD_GC_FREEZE": "1" if freeze else "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ward", "worker", "--model", resolve_model(DEFAULT_GENERATE_MODEL),
         "--served-model-name", DEFAULT_GENERATE_MODEL, "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", str(metrics_port), "--device", "cpu", "--max-num-seqs", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    return proc, worker_ready_port(proc)


def request(tokens: int, n: int) -> pb.GenerateRequest:
    text = f"Summarise the night's handover for bed {n}, then list the open tasks."
    return pb.GenerateRequest(
        model=DEFAULT_GENERATE_MODEL,
        prompt=pb.Prompt(chat=pb.Conversation(messages=[pb.ChatMessage(role="user", content=text)],
                                              add_generation_prompt=True)),
        params=pb.SamplingParams(max_tokens=tokens, ignore_eos=True, temperature=0),
    )


async def load(port: int, streams: int, tokens: int, seconds: float) -> dict:
    gaps: list[float] = []
    done = 0

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.WorkerStub(channel)
        deadline = time.monotonic() + seconds

        async def one_stream(k: int) -> None:
            nonlocal done
            n = k
            while time.monotonic() < deadline:
                last = None
                async for _ in stub.Generate(request(tokens, n)):
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                done += 1
                n += streams

        await asyncio.gather(*(one_stream(k) for k in range(streams)))
    gaps.sort()
    pick = (lambda q: round(1000 * gaps[min(len(gaps) - 1, int(q * len(gaps)))], 2)) if gaps else (lambda q: None)
    return {"requests": done, "gaps": len(gaps), "gap_p50_ms": pick(0.5), "gap_p99_ms": pick(0.99),
            "gap_p999_ms": pick(0.999), "gap_max_ms": round(1000 * gaps[-1], 1) if gaps else None}


def frozen_objects(metrics_url: str) -> float | None:
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line.startswith("ward_worker_gc_frozen_objects "):
            return float(line.split()[1])
    return None


def by_generation(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict:
    """Collections and their pause between two readings of (sum, count) per generation."""
    rows = {}
    for gen in "012":
        total, count = after[gen][0] - before[gen][0], int(after[gen][1] - before[gen][1])
        rows[gen] = {"count": count, "total_ms": round(1000 * total, 1),
                     "mean_ms": round(1000 * total / count, 2) if count else None}
    return rows


def in_process(requests: int) -> dict:
    """Beside a started engine of the default model, in this process: a full collection's pause, and
    the collections ``requests`` short generations cause, before and after the freeze."""
    import gc

    from prometheus_client import CollectorRegistry

    from worker import LLM, SamplingParams
    from worker.gc_heap import GcPauses, freeze_startup_heap

    llm = LLM(DEFAULT_GENERATE_MODEL, device="cpu")
    prompts = [{"prompt_token_ids": [100 + i % 50, 200 + i % 70, 300]} for i in range(requests)]
    params = SamplingParams(max_tokens=2, ignore_eos=True, temperature=0.0)

    def timed() -> float:
        begun = time.perf_counter()
        gc.collect()
        return round(1000 * (time.perf_counter() - begun), 2)

    def churn() -> dict:
        registry = CollectorRegistry()
        recorder = GcPauses(registry)
        for k in range(0, requests, 500):
            llm.generate(prompts[k:k + 500], params)
        recorder.close()
        read = {g: (registry.get_sample_value("ward_worker_gc_pause_seconds_sum", {"generation": g}),
                    registry.get_sample_value("ward_worker_gc_pause_seconds_count", {"generation": g})) for g in "012"}
        return by_generation({g: (0.0, 0.0) for g in "012"}, read)

    report = {"tracked_objects": len(gc.get_objects()), "full_collection_ms": [timed() for _ in range(3)],
              "requests": requests, "collections": churn()}
    report["frozen"] = freeze_startup_heap()
    report["frozen_full_collection_ms"] = [timed() for _ in range(3)]
    report["frozen_collections"] = churn()
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--in-process-requests", type=int, default=3000)
    ap.add_argument("--json")
    args = ap.parse_args()
    runs = {}
    for freeze in (True, False):
        metrics_port = free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        proc, port = start_worker(freeze, metrics_port)
        try:
            before = scrape_gc(metrics_url)
            client = asyncio.run(load(port, args.streams, args.tokens, args.seconds))
            after, frozen = scrape_gc(metrics_url), frozen_objects(metrics_url)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        label = "frozen" if freeze else "not frozen (WARD_GC_FREEZE=0)"
        runs[label] = {"frozen_objects": frozen, "collections": by_generation(before, after), "client": client}
        print(json.dumps({label: runs[label]}), flush=True)
    beside_engine = in_process(args.in_process_requests)
    print(json.dumps(beside_engine), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"streams": args.streams, "tokens": args.tokens,
                                                       "seconds": args.seconds, "runs": runs,
                                                       "in_process": beside_engine}, indent=1))


if __name__ == "__main__":
    main()
