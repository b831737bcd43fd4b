"""`ward bench fairness`: the noisy neighbour. Team A floods the engine (a closed loop of many streams), team B
sends one request at a time; B's latency beside A is compared with B's latency alone, and each team's share of
the served tokens with its weight. A script that prints figures, not a test.

    ward bench fairness --model smollm2-135m-instruct --device cpu --out DIR          # Ward's whole stack
    ward bench fairness --base-url http://127.0.0.1:8011 --served-model llama8b ...   # any OpenAI server (a peer)

Phases, each ``--duration`` seconds of measurement after ``--warmup`` seconds of load:
  alone   B alone, one request at a time
  flood   A's closed loop of ``--flood`` streams, B as before
  shares  A and B both flooding (half the streams each); served tokens per team against the weights
Every request is a streamed /v1/completions call with a random token-id prompt of ``--input`` tokens asking
for exactly ``--output`` tokens (ignore_eos). A refused request (429/503) waits its Retry-After (at most 1 s)
and is counted, as the OpenAI SDK would wait.

One Python process reading thousands of SSE streams saturates its core long before an H200 engine does, and
then measures its own event loop; so the flood runs in processes of at most ``STREAMS_PER_PROCESS`` streams
each, and B's prober alone in the main process. Halfway through each window the server's ``/metrics`` are
read (where it has them), to show where the flood's requests sit: gateway, worker queue or engine.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import pathlib
import random
import re
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import httpx

from ward.benchmarks.worker_metrics import histogram_totals, mean_ms

STREAMS_PER_PROCESS = 256
SERVER_GAUGES = ("ward_gateway_requests_in_flight", "ward_admission_queue_requests", "ward_num_requests_waiting",
                 "ward_num_requests_running", "ward_team_num_requests_waiting", "ward_team_num_requests_running")


@dataclass
class TeamRecord:
    """What one team saw in a phase's measurement window."""

    ttft: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    tokens_in_window: int = 0
    completed: int = 0
    refused: int = 0
    errors: int = 0

    def merge(self, other: "TeamRecord") -> None:
        self.ttft += other.ttft
        self.e2e += other.e2e
        for name in ("tokens_in_window", "completed", "refused", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Client:
    team: str
    key: str | None
    record: TeamRecord = field(default_factory=TeamRecord)


@dataclass(frozen=True)
class Window:
    """The measurement window of a phase (monotonic clock, the same in every process of the machine): load
    runs before it (warm-up) and stops at its end."""

    start: float
    end: float

    @classmethod
    def after(cls, warmup: float, duration: float) -> "Window":
        now = time.monotonic()
        return cls(now + warmup, now + warmup + duration)

    def open(self, t: float) -> bool:
        return self.start <= t < self.end

    def over(self) -> bool:
        return time.monotonic() >= self.end


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1)


async def _one(http: httpx.AsyncClient, client: Client, model: str, prompt: list[int], n_out: int,
               window: Window) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": n_out, "min_tokens": n_out, "ignore_eos": True,
            "temperature": 0.0, "stream": True}
    headers = {"Authorization": f"Bearer {client.key}"} if client.key else {}
    rec = client.record
    t0 = time.monotonic()
    first = None
    try:
        async with http.stream("POST", "/v1/completions", json=body, headers=headers) as r:
            if r.status_code in (429, 503):
                await r.aread()
                if window.open(t0):
                    rec.refused += 1
                await asyncio.sleep(min(float(r.headers.get("retry-after", "1") or 1), 1.0))
                return
            if r.status_code != 200:
                await r.aread()
                rec.errors += window.open(t0)
                await asyncio.sleep(0.1)
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.monotonic()
                if '"error"' in line[:20]:
                    rec.errors += window.open(t0)
                    return
                if first is None:
                    first = now
                if window.open(now):
                    rec.tokens_in_window += 1  # one chunk per token: the servers stream token by token here
    except httpx.HTTPError:
        rec.errors += window.open(t0)
        return
    end = time.monotonic()
    if first is not None and window.open(t0):
        rec.ttft.append(first - t0)
        rec.e2e.append(end - t0)
        rec.completed += 1


async def _loop(http: httpx.AsyncClient, client: Client, model: str, n_in: int, n_out: int, vocab: int,
                window: Window, seed: int, delayed: bool) -> None:
    rng = random.Random(seed)
    if delayed:  # a probing client starts when the flood is established, not with it
        await asyncio.sleep(max(0.0, window.start - time.monotonic()))
    while not window.over():
        prompt = [rng.randrange(1000, vocab) for _ in range(n_in)]
        await _one(http, client, model, prompt, n_out, window)


async def _streams(base: str, model: str, client: Client, streams: int, first_seed: int, a: argparse.Namespace,
                   window: Window, delayed: bool) -> None:
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(600, connect=30), limits=limits) as http:
        await asyncio.gather(*(_loop(http, client, model, a.input, a.output, a.vocab, window,
                                     f"{client.team}-{first_seed + i}", delayed) for i in range(streams)))


def _flood_process(base: str, model: str, team: str, key: str | None, streams: int, first_seed: int,
                   a: argparse.Namespace, window: Window) -> dict:
    """One flood process's streams (run in a child process); its record as a dict."""
    client = Client(team, key)
    asyncio.run(_streams(base, model, client, streams, first_seed, a, window, False))
    return asdict(client.record)


async def _server_gauges(base: str, window: Window) -> dict:
    """The server's queue gauges halfway through the window (empty where it has no such /metrics)."""
    await asyncio.sleep(max(0.0, (window.start + window.end) / 2 - time.monotonic()))
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            text = (await http.get("/metrics")).text
    except httpx.HTTPError:
        return {}
    gauges: dict = {}
    for line in text.splitlines():
        m = re.match(r"([a-z_:]+)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if not m or m.group(1) not in SERVER_GAUGES:
            continue
        team = re.search(r'team="([^"]*)"', m.group(2) or "")
        name = m.group(1) + (f"[{team.group(1)}]" if team else "")
        gauges[name] = gauges.get(name, 0.0) + float(m.group(3))
    return gauges


# The worker's per-team split of a first token (worker/server/metrics.py): all of the worker, and the
# engine's queue and time to first token inside it.
TEAM_HISTOGRAMS = {"worker_first_response": "ward_team_first_response_seconds",
                   "engine_queue": "ward_team_queue_time_seconds", "engine_ttft": "ward_team_time_to_first_token_seconds"}


# Read from each gateway in one scrape: its durable audit write (queued to committed, every request's
# records of all teams: a first token waits for its request's open record), by destination; and each
# team's time to first token at the gateway (arrival to the first token out: the client's figure less
# the client and the loopback, the worker's figure plus the gateway), by team.
GATEWAY_HISTOGRAMS = {"audit_write": "ward_audit_write_latency_seconds",
                      "gateway_ttft": "ward_gateway_team_time_to_first_token_seconds"}
GATEWAY_LABELS = {"audit_write": "destination", "gateway_ttft": "team"}


async def _histogram_times(url: str | None, names: dict[str, str], by: str | dict[str, str], at: float) -> dict:
    """Histogram totals (``histogram_totals``) at ``url`` at monotonic time ``at`` (empty without a URL
    or where the server has no such /metrics)."""
    if not url:
        return {}
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    try:
        return await asyncio.to_thread(histogram_totals, url, names, by)
    except (OSError, ValueError):
        return {}


def _team_split(before: dict, after: dict, team: str) -> dict:
    """Mean milliseconds of the team's requests that finished inside the window, per histogram."""
    means = {f"{key}_mean_ms": mean_ms(before, after, key, team) for key in TEAM_HISTOGRAMS}
    return {k: v for k, v in means.items() if v is not None}


async def _phase(bases: list[str], model: str, loops: list[tuple[Client, int, bool]], a: argparse.Namespace) -> dict:
    """Runs ``(client, streams, delayed)`` loops; requests that start in the window are measured to their end.
    Loops of more than one stream run in child processes (``STREAMS_PER_PROCESS`` each), spread over the
    gateways in ``bases`` in turn; a single-stream loop (the prober) uses the first."""
    window = Window.after(a.warmup, a.duration)
    flood = [(c, n) for c, n, _ in loops if n > 1]
    processes = sum(math.ceil(n / STREAMS_PER_PROCESS) for _, n in flood)
    loop = asyncio.get_running_loop()
    jobs: list[tuple[Client, asyncio.Future]] = []
    local = [_streams(bases[0], model, c, n, 0, a, window, delayed) for c, n, delayed in loops if n == 1]
    gauges = asyncio.gather(*(_server_gauges(base, window) for base in bases))
    url = getattr(a, "worker_metrics_url", None)
    times = [asyncio.ensure_future(_histogram_times(url, TEAM_HISTOGRAMS, "team", t)) for t in (window.start, window.end)]
    gateway_times = [asyncio.gather(*(_histogram_times(f"{base}/metrics", GATEWAY_HISTOGRAMS, GATEWAY_LABELS, t)
                                      for base in bases)) for t in (window.start, window.end)]
    with ProcessPoolExecutor(max(1, processes), mp_context=multiprocessing.get_context("spawn")) as pool:
        for client, n in flood:
            for first in range(0, n, STREAMS_PER_PROCESS):
                count = min(STREAMS_PER_PROCESS, n - first)
                base = bases[len(jobs) % len(bases)]
                jobs.append((client, loop.run_in_executor(pool, _flood_process, base, model, client.team, client.key,
                                                          count, first, a, window)))
        await asyncio.gather(*local, *(job for _, job in jobs))
    for client, job in jobs:
        client.record.merge(TeamRecord(**job.result()))
    result = {c.team: _summary(c.record, a.duration) for c, _, _ in loops}
    result["server"] = _added(await gauges)
    before, after = await asyncio.gather(*times)
    for c, _, _ in loops:
        if before or after:
            result[c.team]["worker"] = _team_split(before, after, c.team)
    gw_before, gw_after = (_added_pairs(readings) for readings in await asyncio.gather(*gateway_times))
    for c, _, _ in loops:
        gateway_ms = mean_ms(gw_before, gw_after, "gateway_ttft", c.team)
        if gateway_ms is not None:
            result[c.team]["gateway_ttft_mean_ms"] = gateway_ms
    audit_ms = mean_ms(gw_before, gw_after, "audit_write", "database")
    if audit_ms is not None:
        result["server"]["audit_write_mean_ms"] = audit_ms
    return result


def _added(readings: list[dict]) -> dict:
    """The gauges of several gateways of one stack: each gateway's own (``ward_gateway_*``) added up; the
    worker's, which every gateway relays alike, from the first."""
    total = dict(readings[0]) if readings else {}
    for reading in readings[1:]:
        for name, value in reading.items():
            if name.startswith("ward_gateway_"):
                total[name] = total.get(name, 0.0) + value
    return total


def _added_pairs(readings: list[dict]) -> dict:
    """(sum, count) histogram readings of several gateways added up per series."""
    total: dict = {}
    for reading in readings:
        for key, (s, c) in reading.items():
            s0, c0 = total.get(key, (0.0, 0.0))
            total[key] = (s0 + s, c0 + c)
    return total


def _summary(rec: TeamRecord, duration: float) -> dict:
    return {"completed": rec.completed, "refused": rec.refused, "errors": rec.errors,
            "tokens_per_s": round(rec.tokens_in_window / duration, 1),
            "ttft_p50_ms": _pct(rec.ttft, 0.5), "ttft_p99_ms": _pct(rec.ttft, 0.99),
            "e2e_p50_ms": _pct(rec.e2e, 0.5), "e2e_p99_ms": _pct(rec.e2e, 0.99),
            "ttft_mean_ms": round(1000 * statistics.fmean(rec.ttft), 1) if rec.ttft else None}


async def measure(base: str | list[str], model: str, keys: dict[str, str | None], weights: dict[str, float],
                  a: argparse.Namespace) -> dict:
    """The three phases against ``base`` (or several gateways of one stack, the flood spread over them);
    ``keys`` maps team "a" and "b" to their API keys (None: no key)."""
    base = [base] if isinstance(base, str) else base
    phases: dict = {}
    b = Client("b", keys["b"])
    phases["alone"] = await _phase(base, model, [(b, 1, False)], a)
    print("alone", json.dumps(phases["alone"]), flush=True)
    a_client, b = Client("a", keys["a"]), Client("b", keys["b"])
    phases["flood"] = await _phase(base, model, [(a_client, a.flood, False), (b, 1, True)], a)
    print("flood", json.dumps(phases["flood"]), flush=True)
    half = max(1, a.flood // 2)
    a_client, b = Client("a", keys["a"]), Client("b", keys["b"])
    phases["shares"] = await _phase(base, model, [(a_client, half, False), (b, half, False)], a)
    total = sum(phases["shares"][t]["tokens_per_s"] for t in ("a", "b")) or 1.0
    wsum = weights["a"] + weights["b"]
    for t in ("a", "b"):
        share = phases["shares"][t]["tokens_per_s"] / total
        phases["shares"][t]["share"] = round(share, 3)
        phases["shares"][t]["weight_share"] = round(weights[t] / wsum, 3)
        phases["shares"][t]["share_error"] = round(share / (weights[t] / wsum) - 1, 3)
    print("shares", json.dumps(phases["shares"]), flush=True)
    alone, beside = phases["alone"]["b"]["ttft_p50_ms"], phases["flood"]["b"]["ttft_p50_ms"]
    phases["b_ttft_p50_ratio"] = round(beside / alone, 2) if alone and beside else None
    return phases


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--base-url", help="fairness: measure this OpenAI-compatible server instead of starting Ward")
    ap.add_argument("--served-model", help="fairness: the model name at --base-url")
    ap.add_argument("--flood", type=int, default=None,
                    help="fairness: team A's concurrent streams (default: 8 x --max-num-seqs)")
    ap.add_argument("--weights", default="1,2", help="fairness: weights of teams A and B (Ward only)")
    ap.add_argument("--gateways", type=int, default=1,
                    help="fairness: gateway processes in front of the worker (Ward only), as replicas behind a "
                         "balancer: the flood's processes take them in turn, B the first")
    ap.add_argument("--duration", type=float, default=30.0, help="fairness: seconds measured per phase")
    ap.add_argument("--warmup", type=float, default=5.0, help="fairness: seconds of load before measuring")
    ap.add_argument("--vocab", type=int, default=None, help="fairness: prompt token ids are drawn below this")
    ap.add_argument("--tokenizer-tool-for-shape", dest="fair_tokenizer_tool", default=None,
                    help="fairness: the shared dummy_tokenizer.py, for a benchmark shape with dummy weights")


def run(a: argparse.Namespace) -> int:
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wa, wb = (float(x) for x in a.weights.split(","))
    weights = {"a": wa, "b": wb}
    a.flood = a.flood or 8 * a.max_num_seqs
    report: dict = {"date": time.strftime("%Y-%m-%d"), "input": a.input, "output": a.output, "flood": a.flood,
                    "duration_s": a.duration, "warmup_s": a.warmup}
    if a.base_url:
        a.vocab = a.vocab or 32000
        report.update(server=a.base_url, weights=weights, weights_enforced=False)
        report["phases"] = asyncio.run(measure(a.base_url, a.served_model, {"a": None, "b": None}, weights, a))
    else:
        from ward.benchmarks.models import SHAPES
        from ward.benchmarks.stack import GovernedStack, free_port

        metrics_port = free_port()
        a.worker_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        worker_args = ["--device", a.device, "--max-num-seqs", str(a.max_num_seqs), "--max-model-len", str(a.max_model_len),
                       "--metrics-port", str(metrics_port)]
        if getattr(a, "engine_process", False):  # the engine core in a process of its own
            worker_args.append("--engine-process")
        teams = {"a": {"weight": wa}, "b": {"weight": wb}}
        stack = GovernedStack(a.model, a.model, worker_args, teams=teams, out=out, gateways=a.gateways)
        if a.model in SHAPES:
            from ward.benchmarks.serving import dummy_model_dir

            stack.model_dir = dummy_model_dir(a.model, a.fair_tokenizer_tool, stack.data / "model")
            stack.worker_args += ["--load-format", "dummy", "--dtype", "bfloat16"]
            a.vocab = a.vocab or SHAPES[a.model]["vocab_size"]
        else:
            from worker.model.registry import resolve_model

            with open(pathlib.Path(resolve_model(a.model)) / "config.json") as f:
                a.vocab = a.vocab or json.load(f)["vocab_size"]
        with stack:
            report.update(server="ward", model=a.model, device=a.device, weights=weights, gateways=a.gateways,
                          engine_process=bool(getattr(a, "engine_process", False)),
                          max_num_seqs=a.max_num_seqs, stack_ready_s=stack.stack_ready_s)
            report["phases"] = asyncio.run(measure(stack.bases, a.model, stack.keys, weights, a))
        report["audit_verify_exit"], report["audit_verify"] = stack.verify_audit()
    path = out / "fairness.json"
    path.write_text(json.dumps(report, indent=1))
    p = report["phases"]
    print(f"B TTFT p50 alone {p['alone']['b']['ttft_p50_ms']} ms, beside A {p['flood']['b']['ttft_p50_ms']} ms "
          f"(x{p['b_ttft_p50_ratio']}); shares a {p['shares']['a']['share']} b {p['shares']['b']['share']} "
          f"(weights {report['weights']}); wrote {path}", flush=True)
    return 0
