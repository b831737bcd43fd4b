"""GPU-only checks: an attention step captured in a CUDA graph, and a no-synchronisation run.

Used by ``tests/test_kernels.py`` (``@pytest.mark.gpu``); needs CUDA.
"""
from __future__ import annotations

import torch

from kernels_cases import Metrics, rel_err
from worker.attention.backend import AttentionMetadata
from worker.attention.torch_backend import gather_kv, reference_attention

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16


def check_graph_replay(
    num_splits: int | None, num_real: int = 6, graph_batch: int = 8, max_blocks: int = 64
) -> Metrics:
    """Capture one decode step of ``TritonAttention`` (cache write + attention) and replay it twice.

    The graph batch has ``graph_batch - num_real`` padding requests (seq_len 0, slot -1), as a runner
    pads a batch to a captured size. Before each replay the inputs are overwritten in place with new
    queries, new K/V and new, longer or shorter, context lengths (up to ``max_blocks * BLOCK_SIZE``).
    Metrics (worst over the replays): rel_err, unwritten, padding_req_nonzero, cache_mismatch.
    """
    from worker.attention.triton_backend import TritonBackend

    device, dtype = "cuda", torch.bfloat16
    g = torch.Generator().manual_seed(7)
    num_blocks = num_real * max_blocks + 1
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    tables = torch.full((graph_batch, max_blocks), int(perm[-1]), dtype=torch.int32)
    tables[:num_real] = perm[: num_real * max_blocks].view(num_real, max_blocks)
    key_cache = torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, generator=g).to(device, dtype)
    value_cache = torch.randn(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, generator=g).to(device, dtype)

    q = torch.empty(graph_batch, NUM_HEADS, HEAD_DIM, dtype=dtype, device=device)
    k = torch.empty(graph_batch, NUM_KV_HEADS, HEAD_DIM, dtype=dtype, device=device)
    v = torch.empty_like(k)
    seq_lens = torch.zeros(graph_batch, dtype=torch.int32, device=device)
    slot_mapping = torch.full((graph_batch,), -1, dtype=torch.int64, device=device)
    meta = AttentionMetadata(
        num_tokens=graph_batch,
        num_reqs=graph_batch,
        query_start_loc=torch.arange(graph_batch + 1, dtype=torch.int32, device=device),
        seq_lens=seq_lens,
        block_tables=tables.to(device),
        slot_mapping=slot_mapping,
        max_query_len=1,
        max_seq_len=max_blocks * BLOCK_SIZE,  # the capture-time bound, not this step's lengths
    )
    impl = TritonBackend().make_impl(NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, HEAD_DIM**-0.5, None)
    impl.num_splits = num_splits
    kv_cache = (key_cache, value_cache)

    def fill_step(step: int) -> list[int]:
        step_gen = torch.Generator().manual_seed(100 + step)
        lens = torch.randint(1, max_blocks * BLOCK_SIZE + 1, (num_real,), generator=step_gen).tolist()
        last = torch.tensor(lens) - 1
        slots = tables[torch.arange(num_real), last // BLOCK_SIZE].long() * BLOCK_SIZE + last % BLOCK_SIZE
        seq_lens.copy_(torch.tensor(lens + [0] * (graph_batch - num_real), dtype=torch.int32))
        slot_mapping.copy_(torch.cat([slots, torch.full((graph_batch - num_real,), -1, dtype=torch.int64)]))
        q.copy_(torch.randn(q.shape, generator=step_gen).to(dtype))
        k.copy_(torch.randn(k.shape, generator=step_gen).to(dtype))
        v.copy_(torch.randn(v.shape, generator=step_gen).to(dtype))
        return lens

    fill_step(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        impl.forward(q, k, v, kv_cache, meta)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = impl.forward(q, k, v, kv_cache, meta)

    worst: Metrics = {"rel_err": 0.0, "unwritten": 0.0, "padding_req_nonzero": 0.0, "cache_mismatch": 0.0}
    for step in (1, 2):
        lens = fill_step(step)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        refs, mismatched = [], 0.0
        for i, seq_len in enumerate(lens):
            k_ctx, v_ctx = gather_kv(kv_cache, meta.block_tables[i], seq_len)
            mismatched += float((k_ctx[-1] != k[i]).sum() + (v_ctx[-1] != v[i]).sum())
            refs.append(reference_attention(q[i : i + 1].float(), k_ctx.float(), v_ctx.float(), impl.scale))
        real = out[:num_real].float()
        worst["rel_err"] = max(worst["rel_err"], rel_err(real, torch.cat(refs)))
        worst["unwritten"] += float(torch.isnan(out.float()).sum())
        worst["padding_req_nonzero"] += float((out[num_real:] != 0).sum())
        worst["cache_mismatch"] += mismatched
    return worst


def build_kernel_inputs() -> dict[str, object]:
    """Device tensors for one call of every kernel (a mixed attention step, 8B-like shapes)."""
    device, dtype = "cuda", torch.bfloat16
    num_tokens, hidden, intermediate = 70, 4096, 14336
    num_reqs, max_blocks = 5, 32
    query_lens = [1, 1, 1, 3, 64]
    seq_lens = [300, 17, 500, 40, 64]
    cache_shape = (num_reqs * max_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    query_start_loc = [0, *torch.tensor(query_lens).cumsum(0).tolist()]
    return {
        "hidden": torch.randn(num_tokens, hidden, dtype=dtype, device=device),
        "residual": torch.randn(num_tokens, hidden, dtype=dtype, device=device),
        "norm_weight": torch.randn(hidden, dtype=dtype, device=device),
        "gate_up": torch.randn(num_tokens, 2 * intermediate, dtype=dtype, device=device),
        "positions": torch.randint(0, 1000, (num_tokens,), device=device),
        "cos_sin": torch.randn(1024, HEAD_DIM, device=device),
        "q": torch.randn(num_tokens, NUM_HEADS, HEAD_DIM, dtype=dtype, device=device),
        "k": torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, dtype=dtype, device=device),
        "v": torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, dtype=dtype, device=device),
        "key_cache": torch.randn(cache_shape, dtype=dtype, device=device),
        "value_cache": torch.randn(cache_shape, dtype=dtype, device=device),
        "slot_mapping": torch.randperm(num_reqs * max_blocks * BLOCK_SIZE, device=device)[:num_tokens],
        "query_start_loc": torch.tensor(query_start_loc, dtype=torch.int32, device=device),
        "seq_lens": torch.tensor(seq_lens, dtype=torch.int32, device=device),
        "block_tables": torch.randperm(num_reqs * max_blocks, device=device).to(torch.int32).view(num_reqs, max_blocks),
        "max_query_len": max(query_lens),
        "max_seq_len": max(seq_lens),
        "gemv_x": torch.randn(8, hidden, dtype=dtype, device=device),
        "o_weight": torch.randn(hidden, hidden, dtype=dtype, device=device) * hidden**-0.5,
        "gate_up_weight": torch.randn(2 * intermediate, hidden, dtype=dtype, device=device) * hidden**-0.5,
    }


def run_every_kernel(inputs: dict) -> None:
    """Launch every public kernel once on ``inputs`` (attention with and without split-KV)."""
    from worker.kernels import (
        fused_add_rms_norm,
        fused_add_rms_norm_,
        reshape_and_cache,
        rms_norm,
        rotary_embedding,
        silu_and_mul,
        unified_attention,
    )

    from worker.kernels.decode_gemv import decode_gemv

    x = inputs
    decode_gemv(x["gemv_x"], x["o_weight"])  # split K: tickets and partial sums in the workspace
    decode_gemv(x["gemv_x"][:1], x["gate_up_weight"], silu=True)
    rms_norm(x["hidden"], x["norm_weight"], 1e-5)
    fused_add_rms_norm(x["hidden"], x["residual"], x["norm_weight"], 1e-5)
    fused_add_rms_norm_(x["hidden"], x["residual"], x["norm_weight"], 1e-5)
    silu_and_mul(x["gate_up"])
    rotary_embedding(x["positions"], x["q"], x["k"], x["cos_sin"])
    reshape_and_cache(x["k"], x["v"], x["key_cache"], x["value_cache"], x["slot_mapping"])
    for num_splits in (None, 1, 4):
        unified_attention(
            x["q"],
            x["key_cache"],
            x["value_cache"],
            torch.empty_like(x["q"]),
            x["query_start_loc"],
            x["seq_lens"],
            x["block_tables"],
            x["max_query_len"],
            x["max_seq_len"],
            HEAD_DIM**-0.5,
            num_splits=num_splits,
        )


def check_decode_gemv_graph(rows: int = 8, replays: int = 3) -> Metrics:
    """Capture Llama-3.1-8B's o_proj (split K) and gate_up + SiLU as decode GEMVs in one CUDA graph,
    then replay it on new inputs written in place. Metrics (worst over the replays): rel_err against
    ``F.linear`` (and ``F.silu(gate) * up``), tickets_left (split tickets not re-armed)."""
    import torch.nn.functional as F

    from worker.kernels.decode_gemv import decode_gemv, reserve_workspace, workspace

    device, dtype, hidden, inter = "cuda", torch.bfloat16, 4096, 14336
    g = torch.Generator(device=device).manual_seed(11)
    w_o = torch.randn(hidden, hidden, generator=g, device=device, dtype=dtype) * hidden**-0.5
    w_gu = torch.randn(2 * inter, hidden, generator=g, device=device, dtype=dtype) * hidden**-0.5
    x = torch.randn(rows, hidden, generator=g, device=device, dtype=dtype)
    reserve_workspace(w_o)
    reserve_workspace(w_gu, silu=True)
    decode_gemv(x, w_o)  # compile outside the capture
    decode_gemv(x, w_gu, silu=True)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_o = decode_gemv(x, w_o)
        y_gu = decode_gemv(x, w_gu, silu=True)
    worst = 0.0
    for _ in range(replays):
        x.copy_(torch.randn(rows, hidden, generator=g, device=device, dtype=dtype))
        graph.replay()
        torch.cuda.synchronize()
        gate, up = F.linear(x, w_gu).chunk(2, dim=-1)
        worst = max(worst, rel_err(y_o, F.linear(x, w_o)), rel_err(y_gu, F.silu(gate) * up))
    return {"rel_err": worst, "tickets_left": float(workspace(torch.device(device)).tickets.count_nonzero())}
