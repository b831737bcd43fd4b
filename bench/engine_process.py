"""The worker's host path at high concurrency, with the engine core in the serving process and in a
process of its own (``ward worker --engine-process``), side by side.

    python bench/engine_process.py [--streams 256] [--output-tokens 64] [--rounds 2] [--json out.json]

A tiny random Llama (2 layers, hidden 64, vocabulary 2,048, dummy weights) makes each engine step
cheap, so what is measured is what a fast GPU leaves: the scheduler, gRPC streaming and the Python
around them. ``--streams`` streamed Generate calls (token-id prompts of 32 tokens, exactly
``--output-tokens`` tokens each, greedy) run at once from this process over grpc.aio; reported per
mode: output tokens/s, time to first token and inter-token gaps (p50/p99) as the client sees them.
The two modes alternate for ``--rounds`` rounds on the same machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ward.benchmarks.stack import worker_ready_port  # noqa: E402

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048,
        "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}


def start_worker(model_dir: str, engine_process: bool, max_seqs: int) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "ward", "worker", "--model", model_dir, "--load-format", "dummy", "--device", "cpu",
            "--port", "0", "--max-num-seqs", str(max_seqs), "--max-num-batched-tokens", "8192",
            "--num-kv-blocks", "4096", "--max-model-len", "1024", "--log-level", "WARNING"]
    if engine_process:
        args.append("--engine-process")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    return proc, f"127.0.0.1:{worker_ready_port(proc)}"


async def one_stream(stub, pb, i: int, n_out: int, t0: float) -> tuple[float, list[float]]:
    prompt = pb.Prompt(token_ids=pb.TokenIds(ids=[(i * 7 + j) % 2000 + 3 for j in range(32)]))
    req = pb.GenerateRequest(prompt=prompt, params=pb.SamplingParams(max_tokens=n_out, ignore_eos=True, temperature=0))
    first, gaps, last = None, [], None
    async for msg in stub.Generate(req):
        now = time.perf_counter()
        count = sum(len(c.token_ids) for c in msg.choices)
        if not count:
            continue
        if first is None:
            first = now - t0
        elif last is not None:
            gaps.extend([(now - last) / count] * count)  # tokens that came together share the gap
        last = now
    return first, gaps


async def measure(address: str, streams: int, n_out: int) -> dict:
    import grpc

    from proto.ward.worker.v1 import worker_pb2 as pb
    from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        await asyncio.gather(*(one_stream(stub, pb, i, 8, time.perf_counter()) for i in range(16)))  # warm up
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(stub, pb, i, n_out, t0) for i in range(streams)))
        seconds = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    gaps = sorted(g for r in results for g in r[1])

    def pct(xs, q):
        return 1000 * xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]

    return {"out_tok_s": round(streams * n_out / seconds, 1), "seconds": round(seconds, 2),
            "ttft_p50_ms": round(pct(ttft, 50), 1), "ttft_p99_ms": round(pct(ttft, 99), 1),
            "itl_p50_ms": round(pct(gaps, 50), 2), "itl_p99_ms": round(pct(gaps, 99), 2),
            "itl_mean_ms": round(1000 * statistics.mean(gaps), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    model_dir = tempfile.mkdtemp(prefix="ward-tiny-")
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(TINY, f)
    rows = []
    for round_ in range(args.rounds):
        for engine_process in (False, True):
            proc, address = start_worker(model_dir, engine_process, args.streams)
            try:
                figures = asyncio.run(measure(address, args.streams, args.output_tokens))
            finally:
                proc.terminate()
                proc.wait(30)
            row = {"round": round_, "engine": "own process" if engine_process else "serving process", **figures}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"streams": args.streams, "output_tokens": args.output_tokens, "cpus": os.cpu_count(),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
