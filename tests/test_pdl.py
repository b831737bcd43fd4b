"""Programmatic dependent launch (worker/kernels/pdl.py): the switch on any machine; on a Hopper GPU, a
decode layer's chain of kernels captured in a CUDA graph with PDL gives what the same kernels give
launched one after another without it.

The chain is the one a decode step runs (norm, qkv GEMV, rotary + cache write, split attention and
its merge, o GEMV, norm, gate_up GEMV with SiLU, down GEMV), twice, so every kernel reads what the one
before it wrote: a kernel that read before its predecessor finished would see the previous replay's
values, and each replay gets new inputs.
"""
from __future__ import annotations

import pytest
import torch

from worker.kernels import pdl


@pytest.mark.parametrize(("value", "expected"), [("", True), ("1", True), (" 0 ", False)])
def test_pdl_setting_reads_the_switch(value: str, expected: bool) -> None:
    assert pdl.pdl_setting(value) is expected


def test_pdl_setting_rejects_other_values() -> None:
    with pytest.raises(ValueError, match="WARD_PDL must be 0 or 1"):
        pdl.pdl_setting("yes")


def test_pdl_is_never_used_off_cuda() -> None:
    assert pdl.use_pdl(torch.device("cpu")) is False
    assert pdl.launch_options(False) == {}
    assert pdl.launch_options(True) == {"launch_pdl": True}


def test_pdl_is_never_used_under_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdl, "_INTERPRETED", True)
    assert pdl.use_pdl(torch.device("cuda", 0)) is False


def test_pdl_switch_off_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdl, "_ENABLED", False)
    assert pdl.use_pdl(torch.device("cuda", 0)) is False


HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 4096, 32, 8, 128, 4096
BLOCK, NUM_BLOCKS, ROWS = 16, 128, 4


def _layer_weights(gen: torch.Generator, device: str) -> dict[str, torch.Tensor]:
    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) / shape[-1] ** 0.5).to(device, torch.bfloat16)

    return {
        "norm1": (1 + 0.1 * torch.randn(HIDDEN, generator=gen)).to(device, torch.bfloat16),
        "norm2": (1 + 0.1 * torch.randn(HIDDEN, generator=gen)).to(device, torch.bfloat16),
        "qkv": w((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN),
        "o": w(HIDDEN, HEADS * HEAD_DIM),
        "gate_up": w(2 * INTERMEDIATE, HIDDEN),
        "down": w(HIDDEN, INTERMEDIATE),
    }


def _chain(state: dict[str, torch.Tensor], layers: list[dict[str, torch.Tensor]]) -> None:
    """Two decode layers on ``state``'s static buffers; results land in state["out"] / state["res_out"]."""
    from worker.kernels.attention import unified_attention
    from worker.kernels.decode_gemv import decode_gemv
    from worker.kernels.norm import fused_add_rms_norm
    from worker.kernels.rotary_cache import rotary_and_cache

    hidden, residual = state["hidden"], state["residual"]
    for i, weights in enumerate(layers):
        normed, residual = fused_add_rms_norm(hidden, residual, weights["norm1"], 1e-5)
        qkv = decode_gemv(normed, weights["qkv"])
        q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
        q = q.reshape(ROWS, HEADS, HEAD_DIM)
        k, v = k.reshape(ROWS, KV_HEADS, HEAD_DIM), v.reshape(ROWS, KV_HEADS, HEAD_DIM)
        key_cache, value_cache = state[f"key_cache{i}"], state[f"value_cache{i}"]
        rotary_and_cache(state["positions"], q, k, v, key_cache, value_cache, state["slots"], state["cos_sin"])
        attn = torch.empty_like(q)
        unified_attention(q, key_cache, value_cache, attn, state["query_start_loc"], state["seq_lens"],
                          state["block_tables"], max_query_len=1, max_seq_len=NUM_BLOCKS * BLOCK // ROWS,
                          scale=HEAD_DIM**-0.5, num_splits=4)
        o = decode_gemv(attn.reshape(ROWS, HEADS * HEAD_DIM), weights["o"])
        normed, residual = fused_add_rms_norm(o, residual, weights["norm2"], 1e-5)
        hidden = decode_gemv(decode_gemv(normed, weights["gate_up"], silu=True), weights["down"])
    state["out"].copy_(hidden)
    state["res_out"].copy_(residual)


def _fresh_inputs(state: dict[str, torch.Tensor], gen: torch.Generator, context: int) -> None:
    """New activations and a new position per request (the same block tables, so slots move on)."""
    state["hidden"].copy_(torch.randn(ROWS, HIDDEN, generator=gen).to(torch.bfloat16))
    state["residual"].copy_(torch.randn(ROWS, HIDDEN, generator=gen).to(torch.bfloat16))
    per_request = NUM_BLOCKS * BLOCK // ROWS
    state["seq_lens"].fill_(context + 1)
    state["positions"].fill_(context)
    starts = torch.arange(ROWS, device=state["slots"].device) * per_request
    state["slots"].copy_(starts + context)


def _make_state(device: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    from worker.model import ops as torch_ops

    per_request = NUM_BLOCKS // ROWS
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM)
    state = {
        "hidden": torch.empty(ROWS, HIDDEN, dtype=torch.bfloat16, device=device),
        "residual": torch.empty(ROWS, HIDDEN, dtype=torch.bfloat16, device=device),
        "out": torch.empty(ROWS, HIDDEN, dtype=torch.bfloat16, device=device),
        "res_out": torch.empty(ROWS, HIDDEN, dtype=torch.bfloat16, device=device),
        "positions": torch.zeros(ROWS, dtype=torch.int64, device=device),
        "slots": torch.zeros(ROWS, dtype=torch.int64, device=device),
        "seq_lens": torch.zeros(ROWS, dtype=torch.int32, device=device),
        "query_start_loc": torch.arange(ROWS + 1, dtype=torch.int32, device=device),
        "block_tables": torch.arange(NUM_BLOCKS, dtype=torch.int32, device=device).reshape(ROWS, per_request),
        "cos_sin": torch_ops.build_cos_sin_cache(inv_freq, NUM_BLOCKS * BLOCK, 1.0).to(device),
    }
    for i in range(2):
        for name in ("key_cache", "value_cache"):
            cache = torch.randn(NUM_BLOCKS, BLOCK, KV_HEADS, HEAD_DIM, generator=gen).to(device, torch.bfloat16)
            state[f"{name}{i}"] = cache
    return state


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in state.items()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < pdl.PDL_MIN_CAPABILITY,
                    reason="needs a GPU with programmatic dependent launch (compute capability 9.0+)")
def test_decode_chain_in_a_cuda_graph_with_pdl_matches_plain_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(0)
    layers = [_layer_weights(gen, "cuda") for _ in range(2)]
    graphed = _make_state("cuda", gen)
    plain = _clone(graphed)
    from worker.kernels.decode_gemv import reserve_workspace

    for weights in layers:
        for name in ("qkv", "o", "down"):
            reserve_workspace(weights[name])
        reserve_workspace(weights["gate_up"], silu=True)

    monkeypatch.setattr(pdl, "_ENABLED", True)
    assert pdl.use_pdl(torch.device("cuda"))
    _fresh_inputs(graphed, gen, context=200)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _chain(_clone(graphed), layers)  # compiles the PDL variants outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _chain(graphed, layers)

    for step, context in enumerate((200, 201, 333, 64, 480)):
        _fresh_inputs(graphed, gen, context)
        plain.update({name: graphed[name].clone() for name in ("hidden", "residual", "seq_lens", "positions",
                                                                "slots")})
        graph.replay()
        monkeypatch.setattr(pdl, "_ENABLED", False)
        _chain(plain, layers)
        monkeypatch.setattr(pdl, "_ENABLED", True)
        torch.cuda.synchronize()
        for name in ("out", "res_out", "key_cache0", "value_cache0", "key_cache1", "value_cache1"):
            assert torch.equal(graphed[name], plain[name]), (step, name,
                                                             (graphed[name].float() - plain[name].float()).abs().max())
        assert graphed["out"].abs().sum() > 0, step
