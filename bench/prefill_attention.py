"""Prefill attention on a GPU: Ward's paged kernel with its built-in prefill tiles and with every shape
of a small grid (rows per program, tokens per K/V tile, warps, stages), beside vLLM's
FlashAttention-3 on the same paged cache when the peer's package is on the path. A script that
prints figures, not a test.

Each case is a prefill step of the Llama-3.1-8B attention (32 query heads, 8 KV heads, head dim 128,
16-token pages scattered over the cache): fresh prompts (``8x1024``), a chunk after a cached
context (``2x2048@2048``: 2 requests, 2,048 new tokens each after 2,048 in the cache) and one long
prompt (``1x4096``). The figure is microseconds per call (CUDA-graph replays of 10 calls) and the
causal attention FLOP rate (QK and PV of the keys each query sees). Every variant's output is
checked against the first's. The best shape per case is printed last, as a ``WARD_PREFILL_TILE``
value for a whole-model A/B (``ward bench offline --workloads offline_1024_128,mixed``).

Usage (repository root on PYTHONPATH): python3 bench/prefill_attention.py [--cases 8x1024,2x2048@2048]
       [--grid rows=64,128,256:tokens=32,64,128:warps=4,8:stages=2,3,4] [--out prefill_attention.json]
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import worker.kernels.attention as attention  # noqa: E402
import worker.kernels.attention_config as attention_config  # noqa: E402

from attention_splits import fa3  # noqa: E402  (bench/, the script's own folder)
from worker.tuning.graph_timing import timed_us  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, PAGE = 32, 8, 128, 16


def parse_case(spec: str) -> tuple[int, int, int]:
    """'8x1024' or '2x2048@2048' as (requests, new tokens each, cached context each)."""
    match = re.fullmatch(r"(\d+)x(\d+)(?:@(\d+))?", spec)
    if not match:
        raise ValueError(f"a case is REQUESTSxTOKENS[@CONTEXT], got {spec!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def parse_grid(spec: str) -> list[tuple[int, int, int, int]]:
    axes = dict(part.split("=") for part in spec.split(":"))
    values = [[int(v) for v in axes[name].split(",")] for name in ("rows", "tokens", "warps", "stages")]
    return list(itertools.product(*values))


@contextlib.contextmanager
def forced_tiles(shape: tuple[int, int, int, int] | None):
    """Prefill launches with (rows, tokens, warps, stages), as WARD_PREFILL_TILE would set them (None
    keeps the built-in choice)."""
    kept = attention_config.PREFILL_TILE
    attention_config.PREFILL_TILE = shape
    try:
        yield
    finally:
        attention_config.PREFILL_TILE = kept


def causal_flops(requests: int, new: int, context: int) -> float:
    """QK and PV FLOPs of every query over the keys it sees (its context and the new tokens up to itself)."""
    seen = requests * sum(context + i + 1 for i in range(new))
    return 4.0 * seen * HEAD_DIM * HEADS


def run_case(spec: str, grid: list[tuple[int, int, int, int]], fa) -> dict:
    requests, new, context = parse_case(spec)
    dev = torch.device("cuda")
    total = context + new
    blocks_per = -(-total // PAGE)
    num_blocks = requests * blocks_per + 8
    k_cache = torch.randn(num_blocks, PAGE, KV_HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(num_blocks)[: requests * blocks_per].view(requests, blocks_per).to(dev, torch.int32)
    q = torch.randn(requests * new, HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    qsl = torch.arange(0, requests * new + 1, new, device=dev, dtype=torch.int32)
    seq_lens = torch.full((requests,), total, device=dev, dtype=torch.int32)
    scale = HEAD_DIM**-0.5
    flops = causal_flops(requests, new, context)
    row: dict = {"case": spec, "variants": {}}
    reference = None
    for shape in [None, *grid]:
        name = "built-in" if shape is None else ":".join(map(str, shape))

        def call() -> None:
            attention.unified_attention(q, k_cache, v_cache, out, qsl, seq_lens, table, new, total, scale,
                                        num_reqs=requests)

        try:
            with forced_tiles(shape):
                us = timed_us(call, iters=10)
        except Exception as exc:  # noqa: BLE001 - a shape that does not compile or fit is skipped
            row["variants"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:100]}"}
            continue
        if reference is None:
            reference = out.clone()
        elif not torch.allclose(out, reference, atol=2e-2, rtol=2e-2):
            row["variants"][name] = {"error": "output differs from the built-in shape's"}
            continue
        row["variants"][name] = {"us": round(us, 1), "tflop_s": round(flops / us / 1e6, 1)}
    if fa is not None:
        fa_out = torch.empty_like(q)

        def call_fa() -> None:
            fa(q, k_cache, v_cache, max_seqlen_q=new, cu_seqlens_q=qsl, max_seqlen_k=total, seqused_k=seq_lens,
               softmax_scale=scale, causal=True, block_table=table, out=fa_out, fa_version=3)

        try:
            us = timed_us(call_fa, iters=10)
            close = reference is None or torch.allclose(fa_out, reference, atol=2e-2, rtol=2e-2)
            row["fa3"] = {"us": round(us, 1), "tflop_s": round(flops / us / 1e6, 1), "matches": close}
        except Exception as exc:  # noqa: BLE001
            row["fa3"] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    timed = {k: v["us"] for k, v in row["variants"].items() if "us" in v}
    if timed:
        row["best"] = min(timed, key=timed.get)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="8x1024,2x2048@2048,1x4096")
    parser.add_argument("--grid", default="rows=64,128,256:tokens=32,64,128:warps=4,8:stages=2,3,4")
    parser.add_argument("--out", default="prefill_attention.json")
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    fa = fa3()
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": []}
    print(report["device"], flush=True)
    for spec in args.cases.split(","):
        row = run_case(spec, grid, fa)
        report["cases"].append(row)
        top = sorted(((v["us"], k) for k, v in row["variants"].items() if "us" in v))[:5]
        print(json.dumps({"case": spec, "built-in": row["variants"].get("built-in"), "fastest": top,
                          "fa3": row.get("fa3")}), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
