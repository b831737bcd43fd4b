"""Where a lone streamed request's first token goes outside the engine: stage by stage in the gateway.

Starts the instant worker (``ward.benchmarks.gateway.instant_worker``) with ``--first-token-delay``
standing in for a prefill, then for each delay: the worker alone over gRPC (a client's Generate call
to its first token), and the gateway in front of it, ``on`` (database key, quotas with a token
limit, durable SQLite audit, as ``ward bench gateway`` runs it) and ``off`` (static key, nothing
governed), each run through bench/stream_first_token_tracer.py so every stage is timestamped. One
client, streamed chat completions of 4 tokens, one at a time (with ``--prompt-token-ids N``, streamed
text completions of a prompt of N token ids instead: the GPU serving benchmark's request; the tracer
times the stages of chat requests only, so then only the TTFTs). Prints the client's TTFT p50 per
configuration and the gateway's median stage times (ms after the request's arrival), and writes
them as JSON (--out). A script, not a test: run it on an otherwise idle machine.
Usage: python bench/stream_first_token_trace.py [--delays-ms 0,25] [--requests 200] [--prompt-token-ids N]
       [--out FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import signal
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from proto.ward.worker.v1 import worker_pb2 as pb  # noqa: E402
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc  # noqa: E402
from ward.benchmarks.gateway import overhead  # noqa: E402

TRACER = ROOT / "bench" / "stream_first_token_tracer.py"
WARM_UP = 20
CONTENT = "Summarise the handover note for the night team. " * 30  # about 1,500 characters


def token_id_prompt(n: int) -> list[int]:
    """n token ids inside the instant worker's vocabulary (32,000)."""
    return [1000 + (i * 7919) % 31000 for i in range(n)]


def direct_ttft_ms(address: str, requests: int, prompt_ids: list[int]) -> float:
    """The worker alone: a gRPC client's Generate call to its first token, p50 (``prompt_ids``: a
    tokenized prompt instead of the chat text, when not empty)."""
    import grpc

    async def run() -> float:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.WorkerStub(channel)
            times = []
            for i in range(requests + WARM_UP):
                prompt = pb.Prompt(token_ids=pb.TokenIds(ids=prompt_ids)) if prompt_ids else pb.Prompt(text=CONTENT)
                call = pb.GenerateRequest(request_id=f"direct-{i}", model=overhead.MODEL,
                                          prompt=prompt, params=pb.SamplingParams(max_tokens=4))
                start, first = time.perf_counter(), None
                async for message in stub.Generate(call):
                    if first is None and message.choices:
                        first = time.perf_counter()
                if i >= WARM_UP:
                    times.append((first - start) * 1000)
            return statistics.median(times)

    return asyncio.run(run())


def traced_config(name: str, quotas: dict | None, trace: pathlib.Path) -> overhead.Config:
    """A gateway configuration whose process runs through the tracer, writing its stages to ``trace``."""
    env = {"TRACE_OUT": str(trace), "TRACE_SKIP": str(WARM_UP), "PYTHONPATH": str(ROOT)}
    return overhead.Config(name, quotas, env=env, launcher=(str(TRACER),))


def client_ttft_ms(gateway: overhead.Gateway, requests: int, prompt_ids: list[int]) -> float:
    body = {"model": overhead.MODEL, "messages": [{"role": "user", "content": CONTENT}], "max_tokens": 4,
            "stream": True}
    path, marker = "/v1/chat/completions", '"content":'
    if prompt_ids:
        body = {"model": overhead.MODEL, "prompt": prompt_ids, "max_tokens": 4, "stream": True}
        path, marker = "/v1/completions", '"text":'
    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=30,
                      headers={"Authorization": f"Bearer {gateway.api_key}"}) as client:
        for i in range(requests + WARM_UP):
            start, first = time.perf_counter(), None
            with client.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"{gateway.config.name}: HTTP {response.status_code}")
                for line in response.iter_lines():
                    if first is None and marker in line:
                        first = time.perf_counter()
            if i >= WARM_UP:
                times.append((first - start) * 1000)
    return statistics.median(times)


def measure(delay_ms: float, requests: int, workdir: pathlib.Path, prompt_ids: list[int]) -> dict:
    workdir = workdir / f"delay-{delay_ms:g}ms"  # each delay's gateways get their own data directories
    workdir.mkdir()
    worker, address = overhead._start_worker(
        workdir, ("--first-token-delay", str(delay_ms / 1000), "--token-delay", "0.002"))
    result: dict = {"first_token_delay_ms": delay_ms}
    try:
        result["worker_over_grpc_ttft_p50_ms"] = round(direct_ttft_ms(address, requests, prompt_ids), 3)
        limits = {"requests_per_minute": overhead.HIGH, "tokens_per_minute": overhead.HIGH}
        for name, quotas in (("on", {"defaults": limits}), ("off", None)):
            trace = workdir / f"trace-{name}.json"
            gateway = overhead._start_gateway(traced_config(name, quotas, trace), address, workdir)
            try:
                ttft = client_ttft_ms(gateway, requests, prompt_ids)
            finally:
                gateway.process.send_signal(signal.SIGTERM)
                gateway.process.wait(30)
            result[name] = {"client_ttft_p50_ms": round(ttft, 3), **json.loads(trace.read_text())}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delays-ms", default="0,25", help="first-token delays of the worker, comma-separated")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--prompt-token-ids", type=int, default=0,
                        help="N > 0: streamed text completions of N token ids instead of the chat prompt")
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ward-first-token-trace-"))
    prompt_ids = token_id_prompt(args.prompt_token_ids)
    results = [measure(float(d), args.requests, workdir, prompt_ids) for d in args.delays_ms.split(",")]
    for result in results:
        print(f"first token after {result['first_token_delay_ms']:g} ms in the worker: worker over gRPC "
              f"{result['worker_over_grpc_ttft_p50_ms']:.2f} ms p50")
        for name in ("on", "off"):
            entry = result[name]
            stages = entry["stages_ms"]
            print(f"  gateway {name}: client TTFT p50 {entry['client_ttft_p50_ms']:.2f} ms; "
                  + ("stages (median ms after arrival):" if stages else "no stages (the tracer times chat requests)"))
            for label, moment in stages.items():
                print(f"    {moment:8.3f}  {label}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
