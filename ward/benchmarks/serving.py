"""`ward bench serving`: serving through Ward's whole stack: a `ward worker` and a `ward gateway` with identity (a real
API key of a real team), quotas (limits enforced on every request) and the audit log (SQLite)
switched on, driven by the shared streaming load tool (`serving_load.py`). A script, not a test.

    ward bench serving --load-tool PATH/serving_load.py --tokenizer-tool PATH/dummy_tokenizer.py \
        --model llama-3.1-8b --device cuda --concurrency 1 16 64 256 --out DIR

Prints one JSON line per concurrency level (TTFT, TPOT, ITL p50/p99, output tok/s), then a summary
with the audit chain check, and writes serving_stack.json into --out.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import subprocess
import sys
import time
import urllib.request

from ward.benchmarks.stack import GovernedStack, free_port
from ward.benchmarks.worker_metrics import histogram_totals, pair_mean_ms

# The worker's own view of each level: where a request's time to first token went inside the engine.
# worker_first_response: from the Generate call's arrival to its first output (every team added up),
# so the worker's own share of a first token (preparing, queueing to the engine thread, delivering the
# output) shows beside the engine's.
_ENGINE_HISTOGRAMS = {"engine_ttft": "ward_time_to_first_token_seconds", "engine_queue": "ward_request_queue_time_seconds",
                      "engine_prefill": "ward_request_prefill_time_seconds",
                      "worker_first_response": "ward_team_first_response_seconds"}


def scrape_engine_times(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the worker's latency histograms at ``url`` (its /metrics)."""
    totals = histogram_totals(url, _ENGINE_HISTOGRAMS)
    return {key: totals.get((key, ""), (0.0, 0.0)) for key in _ENGINE_HISTOGRAMS}


def engine_means(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Mean milliseconds of each histogram over the requests finished between two scrapes."""
    out = {}
    for key in _ENGINE_HISTOGRAMS:
        mean = pair_mean_ms(before[key], after[key])
        if mean is not None:
            out[f"{key}_mean_ms"] = mean
    return out


# The gateway's view: from a request's arrival to the first token it got from the worker.
GATEWAY_TTFT = "ward_gateway_time_to_first_token_seconds"


def scrape_gateway_ttft(url: str) -> tuple[float, float]:
    """(sum, count) of the gateway's time to first token at ``url`` (its /metrics), every model added up."""
    return histogram_totals(url, {"gateway_ttft": GATEWAY_TTFT}).get(("gateway_ttft", ""), (0.0, 0.0))


def gateway_ttft_figure(before: tuple[float, float], after: tuple[float, float]) -> dict[str, float]:
    """The gateway's mean time to first token between two scrapes ({} when nothing was observed)."""
    mean = pair_mean_ms(before, after)
    return {} if mean is None else {"gateway_ttft_mean_ms": mean}


def scrape_gc(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the worker's garbage-collection pauses at ``url``, per generation ("0".."2")."""
    totals = histogram_totals(url, {"gc": "ward_worker_gc_pause_seconds"}, by="generation")
    return {generation: totals.get(("gc", generation), (0.0, 0.0)) for generation in "012"}


def gc_figures(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """The serving process's collector between two scrapes: its pauses in all, and its full collections."""
    paused = sum(after[g][0] - before[g][0] for g in before)
    full = after["2"][1] - before["2"][1]
    return {"worker_gc_paused_ms": round(1000 * paused, 1), "worker_gc_full_collections": int(full)}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--load-tool", help="serving: the shared serving_load.py")
    ap.add_argument("--tokenizer-tool", help="serving: the shared dummy_tokenizer.py")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--input", type=int, default=1024)
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--worker-args", default="",
                    help="serving: more arguments for the worker, one string (e.g. '--max-num-batched-tokens 2048')")
    ap.add_argument("--engine-process", action="store_true",
                    help="serving, fairness: the worker runs its engine core in a process of its own")


def dummy_model_dir(shape: str, tokenizer_tool: str, directory: pathlib.Path) -> str:
    """A model directory of a benchmark shape (dummy weights) with a word-level tokenizer that detokenizes every id."""
    from ward.benchmarks.models import SHAPES, write_config_dir

    model_dir = write_config_dir(shape, str(directory))
    subprocess.run([sys.executable, tokenizer_tool, model_dir, str(SHAPES[shape]["vocab_size"])], check=True)
    return model_dir


def run(a: argparse.Namespace) -> int:
    """Runs the stack for ``a.model`` (a shape name), ``a.device``, ``a.max_model_len``, ``a.out``."""
    if not (a.load_tool and a.tokenizer_tool):
        print("ward bench serving: --load-tool and --tokenizer-tool are required", file=sys.stderr)
        return 2
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = a.model
    metrics_port = free_port()
    worker_args = ["--load-format", "dummy", "--device", a.device, "--max-model-len", str(a.max_model_len),
                   "--dtype", "bfloat16", "--metrics-port", str(metrics_port)]
    if getattr(a, "engine_process", False):
        worker_args.append("--engine-process")
    worker_args += shlex.split(getattr(a, "worker_args", "") or "")
    report: dict = {"date": time.strftime("%Y-%m-%d"), "shape": name, "input": a.input, "output": a.output,
                    "engine_process": bool(getattr(a, "engine_process", False)),
                    "worker_args": getattr(a, "worker_args", "") or ""}
    stack = GovernedStack("", name, worker_args, teams={"bench": {}}, out=out)
    stack.model_dir = dummy_model_dir(name, a.tokenizer_tool, stack.data / "model")
    with stack:
        report["worker_ready_s"], report["stack_ready_s"] = stack.worker_ready_s, stack.stack_ready_s
        key, base = stack.keys["bench"], stack.base
        levels = []
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        for c in a.concurrency:
            before, gc_before = scrape_engine_times(metrics_url), scrape_gc(metrics_url)
            gateway_before = scrape_gateway_ttft(base + "/metrics")
            res = subprocess.run([sys.executable, a.load_tool, base, name, "--concurrency", str(c), "--input",
                                  str(a.input), "--output", str(a.output), "--api-key", key],
                                 capture_output=True, text=True, env=stack.env, timeout=900)
            line = [x for x in res.stdout.splitlines() if x.startswith("{")]
            if res.returncode != 0 or not line:
                report["failed_level"] = {"concurrency": c, "stderr": res.stderr[-3000:]}
                print(f"load tool failed at concurrency {c}:\n{res.stderr[-3000:]}", file=sys.stderr, flush=True)
                break
            level = json.loads(line[-1])
            # the load tool's warm-up request finishes inside the level too: one request in 2c+1
            level.update(engine_means(before, scrape_engine_times(metrics_url)))
            level.update(gateway_ttft_figure(gateway_before, scrape_gateway_ttft(base + "/metrics")))
            level.update(gc_figures(gc_before, scrape_gc(metrics_url)))
            levels.append(level)
            print(json.dumps(level), flush=True)
        report["levels"] = levels
        probe = urllib.request.Request(
            base + "/v1/completions", data=json.dumps({"model": name, "prompt": [1000, 1001], "max_tokens": 1}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(probe) as r:  # quotas are on: every answer carries the limits
            report["rate_limit_headers"] = {k: v for k, v in r.headers.items() if k.lower().startswith("x-ratelimit")}
    report["audit_verify_exit"], report["audit_verify"] = stack.verify_audit()
    (out / "serving_stack.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report), flush=True)
    return 0
