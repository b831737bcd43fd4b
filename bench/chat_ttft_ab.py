"""Client time to first token of streamed chat requests through the governed stack (`ward worker`
serving a tiny random Llama on the CPU, `ward gateway` with an API key, quotas with a token limit and
max_concurrent, and the durable audit log), served from this checkout and from another
(--baseline-tree), one after the other, alternated --rounds times. Each run starts its own stack,
warms it up, then sends --requests streamed chat completions at one client. Also reads the worker's
own mean TTFT for the same requests, so the time outside the engine shows. A script, not a test.

    python bench/chat_ttft_ab.py --baseline-tree DIR --tokenizer-tool PATH/dummy_tokenizer.py \
        [--rounds 3] [--requests 100] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ward.benchmarks.models import TINY_LLAMA  # noqa: E402
from ward.benchmarks.serving import engine_means, scrape_engine_times  # noqa: E402
from ward.benchmarks.stack import GovernedStack, free_port  # noqa: E402

SHAPE = "tiny-llama-64"
# A tiny random Llama: 2 layers, hidden 64, a 32,000-word vocabulary (an engine step of a few ms on a CPU).
CONFIG = dict(TINY_LLAMA, hidden_size=64, intermediate_size=128, vocab_size=32000)
VOCAB = CONFIG["vocab_size"]
# The dummy tokenizer has one word per id ("t0" ...); a template of those words makes chat prompts servable.
CHAT_TEMPLATE = ("{% for m in messages %}t1 {{ m['content'] }} t2 {% endfor %}"
                 "{% if add_generation_prompt %}t3{% endif %}")


def model_dir(tokenizer_tool: str, directory: pathlib.Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    path = str(directory)
    subprocess.run([sys.executable, tokenizer_tool, path, str(VOCAB)], check=True)
    config_path = pathlib.Path(path) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config))
    return path


def message(index: int, words: int) -> str:
    return " ".join(f"t{1000 + (index * 7 + k) % (VOCAB - 1000)}" for k in range(words))


async def first_token_ms(client: httpx.AsyncClient, body: dict) -> float:
    """Milliseconds from sending the request to the first streamed chunk carrying generated text."""
    started = time.perf_counter()
    first = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"HTTP {response.status_code}: {(await response.aread())[:400]!r}")
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                choices = json.loads(line[6:]).get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    first = time.perf_counter()
    if first is None:
        raise SystemExit("a stream ended without generated text")
    return 1000 * (first - started)


async def load(base: str, key: str, requests: int, warmup: int, words: int, tokens: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        out = []
        for index in range(warmup + requests):
            body = {"model": SHAPE, "messages": [{"role": "user", "content": message(index, words)}],
                    "max_tokens": tokens, "ignore_eos": True, "stream": True}
            ttft = await first_token_ms(client, body)
            if index >= warmup:
                out.append(ttft)
        return out


def one_run(label: str, tree: pathlib.Path, model: str, out: pathlib.Path, a: argparse.Namespace) -> dict:
    metrics_port = free_port()
    worker_args = ["--load-format", "dummy", "--device", "cpu", "--max-model-len", "512", "--dtype", "bfloat16",
                   "--metrics-port", str(metrics_port)]
    stack = GovernedStack(model, SHAPE, worker_args, teams={"bench": {}}, out=out, tree=tree)
    with stack:
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        asyncio.run(load(stack.base, stack.keys["bench"], 0, a.warmup, a.words, a.tokens))
        before = scrape_engine_times(metrics)
        ttfts = asyncio.run(load(stack.base, stack.keys["bench"], a.requests, 0, a.words, a.tokens))
        engine = engine_means(before, scrape_engine_times(metrics))
    ttfts.sort()
    row = {"code": label, "requests": len(ttfts), "ttft_p50_ms": round(statistics.median(ttfts), 2),
           "ttft_p99_ms": round(ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))], 2),
           "ttft_mean_ms": round(statistics.fmean(ttfts), 2),
           "engine_ttft_mean_ms": round(engine.get("engine_ttft_mean_ms", float("nan")), 2)}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-tree", required=True, help="the checkout to compare against (e.g. a worktree of main)")
    ap.add_argument("--tokenizer-tool", required=True, help="the shared dummy_tokenizer.py")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--words", type=int, default=32, help="words (tokens) in each user message")
    ap.add_argument("--tokens", type=int, default=8, help="tokens generated per request (EOS ignored)")
    ap.add_argument("--json", help="write the runs and their medians here")
    a = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="ward-chat-ttft-"))
    model = model_dir(a.tokenizer_tool, work / "model")
    trees = {"before": pathlib.Path(a.baseline_tree).resolve(), "after": ROOT}
    runs = []
    for round_index in range(a.rounds):
        for label, tree in trees.items():
            runs.append({"round": round_index + 1, **one_run(label, tree, model, work / f"{label}-{round_index}", a)})
    summary = {}
    for label in trees:
        mine = [r for r in runs if r["code"] == label]
        summary[label] = {key: round(statistics.median(r[key] for r in mine), 2)
                          for key in ("ttft_p50_ms", "ttft_p99_ms", "ttft_mean_ms", "engine_ttft_mean_ms")}
    print(json.dumps({"median_of_rounds": summary}), flush=True)
    if a.json:
        report = {"date": time.strftime("%Y-%m-%d"), "shape": SHAPE, "device": "cpu", "requests_per_run": a.requests,
                  "warmup": a.warmup, "user_message_words": a.words, "completion_tokens": a.tokens, "clients": 1,
                  "runs": runs, "median_of_rounds": summary}
        pathlib.Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
