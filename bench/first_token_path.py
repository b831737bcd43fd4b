"""A lone prompt's first token through a real worker process, against the worker's own account of
it: ``ward worker`` (the Llama-3.1-8B shape, dummy bf16 weights on the GPU) started once per layout,
then one streamed Generate at a time over gRPC with fresh random token-id prompts of --prompt tokens.
Per layout: the client's time to the first token and to the end, and the worker's mean time to
first token, queue and prefill from its histograms over the same requests. Layouts: the engine in a
thread of the serving process (the default) and in its own process (--engine-process), each with
--extra worker arguments appended. A script, not a test.
Usage: python bench/first_token_path.py [--prompt 1024] [--requests 24] [--tokens 128]
       [--layouts default,engine-process] [--out FILE]"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time

import grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proto.ward.worker.v1 import worker_pb2 as pb  # noqa: E402
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402
from ward.benchmarks.models import write_config_dir  # noqa: E402
from ward.benchmarks.serving import engine_means, scrape_engine_times  # noqa: E402
from ward.benchmarks.stack import free_port, worker_ready_port  # noqa: E402

NAME = "bench-8b"


def start_worker(model_dir: str, metrics_port: int, extra: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ward", "worker", "--model", model_dir, "--served-model-name", NAME,
         "--host", "127.0.0.1", "--port", "0", "--metrics-port", str(metrics_port), "--load-format", "dummy",
         "--dtype", "bfloat16", "--max-model-len", "4096", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT)
    return proc, worker_ready_port(proc)


async def closed_loop(port: int, prompts: list[list[int]], tokens: int) -> list[tuple[float, float]]:
    """(first token, end) seconds per request, one request at a time."""
    times = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.WorkerStub(channel)
        for ids in prompts:
            req = pb.GenerateRequest(model=NAME, prompt=pb.Prompt(token_ids=pb.TokenIds(ids=ids)),
                                     params=pb.SamplingParams(max_tokens=tokens, min_tokens=tokens,
                                                              ignore_eos=True, temperature=0))
            t0 = time.perf_counter()
            first = None
            async for msg in stub.Generate(req):
                if first is None and any(len(c.token_ids) for c in msg.choices):
                    first = time.perf_counter() - t0
            times.append((first, time.perf_counter() - t0))
    return times


def layout(model_dir: str, name: str, extra: list[str], args, rng: random.Random) -> dict:
    metrics_port = free_port()
    flags = ["--device", args.device] + (["--engine-process"] if name == "engine-process" else []) + extra
    proc, port = start_worker(model_dir, metrics_port, flags)
    try:
        def prompts(n: int) -> list[list[int]]:
            return [[rng.randrange(1000, 120000) for _ in range(args.prompt)] for _ in range(n)]

        asyncio.run(closed_loop(port, prompts(4), args.tokens))  # first launches of every shape
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        before = scrape_engine_times(url)
        times = asyncio.run(closed_loop(port, prompts(args.requests), args.tokens))
        after = scrape_engine_times(url)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    firsts, ends = [1000 * t[0] for t in times], [1000 * t[1] for t in times]
    return {"layout": name, "worker_args": flags, "requests": len(times),
            "client_ttft_p50_ms": round(statistics.median(firsts), 2), "client_ttft_min_ms": round(min(firsts), 2),
            "client_ttft_max_ms": round(max(firsts), 2), "client_total_p50_ms": round(statistics.median(ends), 1),
            **engine_means(before, after), "client_ttft_ms": [round(f, 2) for f in firsts]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--layouts", default="default,engine-process")
    ap.add_argument("--extra", default="", help="more worker arguments, one string")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "first_token_path.json"))
    args = ap.parse_args()
    model_dir = write_config_dir(args.shape, tempfile.mkdtemp(prefix="ward-ftp-"))
    rng = random.Random(0)
    rows = []
    for name in args.layouts.split(","):
        row = layout(model_dir, name, args.extra.split(), args, rng)
        print(json.dumps({k: v for k, v in row.items() if k != "client_ttft_ms"}), flush=True)
        rows.append(row)
    json.dump({"prompt": args.prompt, "tokens": args.tokens, "rows": rows}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
