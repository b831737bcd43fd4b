"""What the serving stack costs: one workload through the gateway + gRPC worker, and straight through
the in-process engine (``LLMEngine``), side by side.

    python bench/serving_overhead.py [--requests 32] [--output-tokens 32] [--concurrency 1 8] [--json out.json]

Workload: ``--requests`` completions of short prompts, each exactly ``--output-tokens`` tokens
(greedy, EOS ignored), kept ``--concurrency`` at a time (a closed loop: a new request as soon as one
finishes). Both paths use the same engine settings. The served path starts ``ward worker`` and
``ward gateway`` as processes on loopback (identity on: an API key in a SQLite database) and sends
non-streamed ``/v1/completions`` requests with httpx from this process, so client, gateway and
worker share the machine. Latency is per request, from send to the full answer.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import pathlib
import platform
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "smollm2-135m-instruct"
WARMUP_REQUESTS = 4
PROMPTS = [
    "The patient in bed four",
    "Discharge summary:",
    "Medication round at eight",
    "Vital signs were stable and",
]


@dataclass
class Result:
    path: str
    concurrency: int
    requests: int
    seconds: float
    output_tokens: int
    latencies_ms: list[float]

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def tok_per_s(self) -> float:
        return self.output_tokens / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def engine_args(args: argparse.Namespace) -> dict:
    return dict(max_model_len=args.max_model_len, num_kv_blocks=args.num_kv_blocks, max_num_seqs=args.max_num_seqs,
                device="cpu")


# ---- in-process ------------------------------------------------------------------------------------
def run_in_process(args: argparse.Namespace) -> list[Result]:
    from worker.config import EngineConfig
    from worker.engine.llm_engine import LLMEngine
    from worker.model.registry import resolve_model
    from worker.sampling_params import SamplingParams

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = LLMEngine(EngineConfig(model=resolve_model(MODEL), **engine_args(args)))
    params = SamplingParams(max_tokens=args.output_tokens, temperature=0.0, ignore_eos=True)
    _engine_pass(engine, params, WARMUP_REQUESTS, WARMUP_REQUESTS, "warmup")
    results = [_engine_pass(engine, params, args.requests, c, f"c{c}") for c in args.concurrency]
    del engine
    gc.collect()
    return results


def _engine_pass(engine, params, requests: int, concurrency: int, tag: str) -> Result:
    started: dict[str, float] = {}
    latencies, tokens, next_index = [], 0, 0
    begin = time.perf_counter()
    while next_index < requests or engine.has_unfinished_requests():
        while next_index < requests and len(started) < concurrency:
            request_id = f"{tag}-{next_index}"
            engine.add_request(request_id, PROMPTS[next_index % len(PROMPTS)], params)
            started[request_id] = time.perf_counter()
            next_index += 1
        for out in engine.step():
            if out.finished:
                latencies.append((time.perf_counter() - started.pop(out.request_id)) * 1000)
                tokens += len(out.outputs[0].token_ids)
    return Result("in-process engine", concurrency, requests, time.perf_counter() - begin, tokens, latencies)


# ---- through the gateway ------------------------------------------------------------------------------
def start_stack(args: argparse.Namespace, workdir: pathlib.Path):
    import httpx
    import yaml

    from gateway.auth.principal import Role
    from gateway.auth.stores import KeyStore, TeamStore
    from gateway.db import create_db_engine, upgrade_to_head
    from ward.supervisor import Supervisor
    from worker.model.registry import resolve_model

    env = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    supervisor = Supervisor(workdir / "logs")
    worker = supervisor.start("worker", [
        sys.executable, "-m", "ward", "worker", "--model", resolve_model(MODEL), "--served-model-name", MODEL,
        "--port", "0", "--device", "cpu", "--max-model-len", str(args.max_model_len),
        "--num-kv-blocks", str(args.num_kv_blocks), "--max-num-seqs", str(args.max_num_seqs)], env)
    line = supervisor.wait_for_line(worker, "WARD_WORKER_READY", 300)
    port = int(dict(p.split("=", 1) for p in line.split()[1:])["port"])
    url = f"sqlite:///{workdir / 'ward.db'}"
    upgrade_to_head(url)
    db = create_db_engine(url)
    TeamStore(db).ensure("bench")
    key = KeyStore(db).create("bench", Role.USER)[1]
    db.dispose()
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump({"models": {MODEL: {"workers": [f"127.0.0.1:{port}"]}}}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gateway_port = s.getsockname()[1]
    gateway = supervisor.start("gateway", [
        sys.executable, "-m", "ward", "gateway", "--config", str(config), "--port", str(gateway_port),
        "--data-dir", str(workdir), "--log-level", "warning"], env)
    base = f"http://127.0.0.1:{gateway_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if gateway.exited():
            raise gateway.failure("exited")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return supervisor, [gateway, worker], base, key
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise gateway.failure("was not ready in time")


async def _served_pass(base: str, key: str, args: argparse.Namespace, requests: int, concurrency: int) -> Result:
    import httpx

    latencies, tokens = [], 0
    queue = list(range(requests))
    async with httpx.AsyncClient(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=600) as client:

        async def loop() -> None:
            nonlocal tokens
            while queue:
                i = queue.pop(0)
                body = {"model": MODEL, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": args.output_tokens,
                        "temperature": 0, "ignore_eos": True}
                sent = time.perf_counter()
                response = await client.post("/v1/completions", json=body)
                response.raise_for_status()
                latencies.append((time.perf_counter() - sent) * 1000)
                tokens += response.json()["usage"]["completion_tokens"]

        begin = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return Result("gateway + gRPC worker", concurrency, requests, time.perf_counter() - begin, tokens, latencies)


def run_served(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="ward-bench-") as tmp:
        supervisor, children, base, key = start_stack(args, pathlib.Path(tmp))
        try:
            asyncio.run(_served_pass(base, key, args, WARMUP_REQUESTS, WARMUP_REQUESTS))
            return [asyncio.run(_served_pass(base, key, args, args.requests, c)) for c in args.concurrency]
        finally:
            supervisor.stop_all([children[:1], children[1:]])


# ---- report --------------------------------------------------------------------------------------------
def report(results: list[Result]) -> list[dict]:
    rows = []
    print(f"{'path':<24}{'conc':>5}{'req/s':>8}{'tok/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'overhead p50':>14}{'tput ratio':>12}")
    base = {r.concurrency: r for r in results if r.path == "in-process engine"}
    for r in results:
        ref = base[r.concurrency]
        overhead = r.percentile(50) - ref.percentile(50)
        ratio = r.tok_per_s / ref.tok_per_s
        print(f"{r.path:<24}{r.concurrency:>5}{r.req_per_s:>8.2f}{r.tok_per_s:>8.1f}{r.percentile(50):>9.0f}"
              f"{r.percentile(99):>9.0f}{overhead:>+13.0f} {ratio:>11.2f}")
        rows.append({**asdict(r), "req_per_s": r.req_per_s, "tok_per_s": r.tok_per_s, "p50_ms": r.percentile(50),
                     "p99_ms": r.percentile(99), "p50_overhead_ms": overhead, "throughput_ratio": ratio})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--num-kv-blocks", type=int, default=512)
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch threads of the engine, both paths (default: torch's own)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    args = parser.parse_args(argv)
    print(f"model {MODEL} on CPU, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"torch threads {args.threads or 'default'}; {args.requests} requests x {args.output_tokens} tokens, "
          "greedy, EOS ignored", flush=True)
    results = run_in_process(args) + run_served(args)
    rows = report(results)
    if args.json:
        args.json.write_text(json.dumps({"model": MODEL, "device": "cpu", "threads": args.threads, "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
