"""Decode attention across batch sizes and context lengths: Ward's paged-attention kernel with its own
split choice and with forced split counts, and vLLM's FlashAttention-3 (when its package is on the
path) on the same paged cache. Each case is 20 calls captured in a CUDA graph, replayed; the figure is
microseconds per call and the K/V bytes read over that time. A script, not a test.
Usage: python bench/attention_splits.py [--batches 8,16,32,64,128,256] [--contexts 1400,u200-2048]
       [--variants auto,s4,c512,auto+o]   (see variant_kwargs)"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import re

import torch

from worker.kernels.attention import unified_attention

HEADS, KV_HEADS, HEAD_DIM, PAGE = 32, 8, 128, 16  # Llama-3.1-8B, one layer
CALLS = 20


def lengths(spec: str, batch: int, rng: random.Random) -> list[int]:
    """'1400' (every request) or 'u800-2048' (uniform)."""
    if spec.startswith("u"):
        lo, hi = (int(x) for x in spec[1:].split("-"))
        return [rng.randint(lo, hi) for _ in range(batch)]
    return [int(spec)] * batch


def graph_time_us(fn) -> float:
    """Microseconds per call of ``fn``: CALLS calls in one CUDA graph, the best of 5 replays."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(CALLS):
            fn()
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1000 / CALLS)
    return best


def fa3():
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func
    except Exception as exc:  # the peer's package is optional here
        print(f"FA3 reference not available: {type(exc).__name__}: {exc}")
        return None
    return flash_attn_varlen_func


@contextlib.contextmanager
def decode_tiles(spec: str):
    """'t64w8s2': decode tiles of 64 tokens, 8 warps, 2 stages instead of the chosen ones ('' keeps them)."""
    if not spec:
        yield
        return
    import worker.kernels.attention as attention
    from worker.kernels.attention_config import AttentionTileConfig

    tile_n, warps, stages = (int(x) for x in re.match(r"t(\d+)w(\d+)s(\d+)$", spec).groups())
    chosen = attention.choose_tile_config

    def forced(max_query_len, group, head_dim, element_size=2):
        config = chosen(max_query_len, group, head_dim, element_size)
        return AttentionTileConfig(config.block_m, config.block_q, tile_n, warps, stages)

    attention.choose_tile_config = forced
    try:
        yield
    finally:
        attention.choose_tile_config = chosen


def variant_kwargs(name: str, order: torch.Tensor) -> dict:
    """'auto' (the heuristic), 's4' (4 equal splits), 'c512' (pieces of 512 tokens), 'c256x4' (pieces of
    256 tokens, at most 4 a request); '+o' passes the requests longest first. A '/t64w8s2' suffix
    (``decode_tiles``) changes the tile shape."""
    kwargs: dict = {}
    if name.endswith("+o"):
        kwargs["request_order"] = order
        name = name[:-2]
    if name.startswith("s"):
        kwargs["num_splits"] = int(name[1:])
    elif name.startswith("c"):  # c512 or c256x4 (pieces of 256 tokens, at most 4)
        tokens, _, most = name[1:].partition("x")
        kwargs["split_tokens"] = int(tokens)
        if most:
            kwargs["num_splits"] = int(most)
    return kwargs


def record(row: dict, name: str, us: float, kv_bytes: int) -> None:
    row[f"{name}_us"] = round(us, 1)
    row[f"{name}_tb_s"] = round(kv_bytes / us / 1e6, 2)


def us_table(rows: list[dict]) -> str:
    """Microseconds per call, a line per case and a column per variant."""
    keys = [k[:-3] for k in rows[0] if k.endswith("_us")]
    lines = ["contexts batch " + " ".join(keys)]
    lines += [f"{r['contexts']} {r['batch']} " + " ".join(str(r.get(k + "_us", "-")) for k in keys) for r in rows]
    return "\n".join(lines)


def case(batch: int, lens: list[int], variants: list[str], fa) -> dict:
    dev = torch.device("cuda")
    blocks_per = [-(-n // PAGE) for n in lens]
    num_blocks = sum(blocks_per) + 8
    k_cache = torch.randn(num_blocks, PAGE, KV_HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(num_blocks, device="cpu").tolist()
    width = max(blocks_per)
    table = torch.zeros(batch, width, dtype=torch.int32)
    at = 0
    for i, nb in enumerate(blocks_per):
        table[i, :nb] = torch.tensor(perm[at : at + nb], dtype=torch.int32)
        at += nb
    table = table.to(dev)
    q = torch.randn(batch, HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    out = torch.empty_like(q)
    qsl = torch.arange(batch + 1, device=dev, dtype=torch.int32)
    seq_lens = torch.tensor(lens, device=dev, dtype=torch.int32)
    kv_bytes = sum(lens) * KV_HEADS * HEAD_DIM * 2 * 2
    scale = HEAD_DIM ** -0.5
    row = {"batch": batch, "mean_context": round(sum(lens) / batch), "max_context": max(lens)}
    reference = None
    order = torch.argsort(seq_lens, descending=True).to(torch.int32)
    for name in variants:
        split_name, _, tile = name.partition("/")
        kwargs = variant_kwargs(split_name, order)
        def run(kwargs=kwargs):
            unified_attention(q, k_cache, v_cache, out, qsl, seq_lens, table, 1, 4096, scale, num_reqs=batch,
                              **kwargs)
        with decode_tiles(tile):
            us = graph_time_us(run)
        if reference is None:
            reference = out.clone()
        else:
            torch.testing.assert_close(out, reference, atol=2e-2, rtol=2e-2)
        record(row, name, us, kv_bytes)
    if fa is not None:
        fa_out = torch.empty_like(q)
        def run_fa():
            fa(q, k_cache, v_cache, max_seqlen_q=1, cu_seqlens_q=qsl, max_seqlen_k=4096, seqused_k=seq_lens,
               softmax_scale=scale, causal=True, block_table=table, out=fa_out, fa_version=3)
        try:
            us = graph_time_us(run_fa)
            torch.testing.assert_close(fa_out, reference, atol=2e-2, rtol=2e-2)
            record(row, "fa3", us, kv_bytes)
        except Exception as exc:
            row["fa3_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="8,16,24,32,48,64,96,128,256")
    ap.add_argument("--contexts", default="1400,u200-2048")
    ap.add_argument("--variants", default="auto,s1,s2,s4,s8,c256,c512,c1024,c256x4,c256x8,s1+o,s2+o,s4+o,c256x4+o,c512+o")
    args = ap.parse_args()
    variants = args.variants.split(",")
    fa = fa3()
    rng = random.Random(0)
    rows = []
    print(torch.cuda.get_device_name())
    for spec in args.contexts.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            row = {"contexts": spec, **case(batch, lengths(spec, batch, rng), variants, fa)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(us_table(rows))
    print(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))  # last line: the whole record


if __name__ == "__main__":
    main()
