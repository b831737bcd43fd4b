"""Greedy decoding of tiny random models through the CUDA code path on the CPU (Triton's interpreter),
with the decode fusions off (plain projections, rotary as its own kernel) and on (projections swapped
for the decode GEMV with the SiLU or GeGLU epilogue, rotary fused into the cache write). Prints, per family,
whether the greedy tokens match, the logits' relative difference and how often each fused kernel ran.

``tests/test_decode_fusion.py`` runs this file in a fresh process with ``TRITON_INTERPRET=1``.

Usage: python tests/decode_fusion_interpreter.py FAMILY [FAMILY ...]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels

import torch  # noqa: E402
from transformers import Gemma2Config, LlamaConfig, Qwen2Config  # noqa: E402

from tests.paged_driver import PagedDriver, rel_err  # noqa: E402
from tests.test_model_families import COMMON, FAMILIES, _random_hf  # noqa: E402
from worker.attention.triton_backend import TritonAttention, TritonBackend  # noqa: E402
from worker.kernels import decode_gemv as gemv_module  # noqa: E402
from worker.kernels import model_ops  # noqa: E402
from worker.kernels import rotary_cache as rotary_cache_module  # noqa: E402
from worker.model.decode_linear import PROJECTIONS, enable_norm_fusion, use_decode_gemv  # noqa: E402
from worker.model.loader import build_model, load_weights  # noqa: E402
from worker.model.quant.apply import finalize_quantized  # noqa: E402
from worker.model.quant.config import QuantConfig  # noqa: E402
from worker.model.spec import load_spec  # noqa: E402



def _one_layer(make):  # one layer is enough for the checks and keeps the interpreter quick
    def config():
        cfg = make()
        cfg.num_hidden_layers = 1
        return cfg
    return config


CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON, num_hidden_layers=2),  # two: a norm folded across layers
    "qwen2-qkv-bias": lambda: Qwen2Config(**COMMON, num_hidden_layers=1),
    "phi3-partial-rotary": _one_layer(FAMILIES["phi3-longrope-partial-rotary"]),
    "gemma2-gelu-mlp": lambda: Gemma2Config(**COMMON, num_hidden_layers=1, head_dim=16, sliding_window=5,
                                            query_pre_attn_scalar=24, attn_logit_softcapping=None,
                                            final_logit_softcapping=None),
    "qwen3-moe": FAMILIES["qwen3-moe-renormalised"],
    # the Llama model quantized to FP8 at load: decode steps read the e4m3 weights through the GEMV,
    # off it the layers' de-quantizing reference (the CPU's W8A8 stand-in) runs
    "llama-fp8": lambda: LlamaConfig(**COMMON, num_hidden_layers=2),
    # the Gemma model quantized to FP8 at load: its gate_up's GeGLU epilogue over e4m3 weights
    "gemma2-fp8": lambda: Gemma2Config(**COMMON, num_hidden_layers=1, head_dim=16, sliding_window=5,
                                       query_pre_attn_scalar=24, attn_logit_softcapping=None,
                                       final_logit_softcapping=None),
}
FP8_AT_LOAD = {"llama-fp8", "gemma2-fp8"}
PROMPTS = {"a": [5, 17, 99, 3, 250, 8, 41, 77, 12, 200, 6, 31], "b": [9, 120, 44, 2, 180]}  # 17 rows: cuBLAS-sized
DECODE_STEPS = 3  # two rows per step: the GEMV's size


def counting(module, name: str, calls: Counter) -> None:
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls[name] += 1
        if kwargs.get("gelu_tanh"):  # Gemma's GeGLU in the GEMV's epilogue
            calls[name + "_gelu_tanh"] += 1
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def greedy(model, spec) -> tuple[list[list[int]], torch.Tensor]:
    drv = PagedDriver(model, spec, num_blocks=8, block_size=16)
    logits = drv.step([(sid, toks, 0) for sid, toks in PROMPTS.items()])
    out = {sid: [int(lg[-1].argmax())] for sid, lg in zip(PROMPTS, logits)}
    kept = [lg[-1] for lg in logits]
    for _ in range(DECODE_STEPS):
        step = drv.step([(sid, out[sid][-1:], len(PROMPTS[sid]) + len(out[sid]) - 1) for sid in PROMPTS])
        for sid, lg in zip(PROMPTS, step):
            out[sid].append(int(lg[-1].argmax()))
            kept.append(lg[-1])
    return [out[sid] for sid in PROMPTS], torch.stack(kept)


def run(name: str) -> dict:
    torch.manual_seed(0)
    hf = _random_hf(CONFIGS[name]())
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        spec = load_spec(d)
        model = build_model(spec, TritonBackend(), torch.device("cpu"), torch.float32, 64, model_ops)
        load_weights(model, spec, d)
    if name in FP8_AT_LOAD:
        finalize_quantized(model, spec, QuantConfig("fp8", "fp8"))
    attns = [layer.self_attn.attn for layer in model.layers]
    assert all(isinstance(a, TritonAttention) for a in attns)
    for attn in attns:
        attn.fuse_rotary = False
    calls: Counter = Counter()
    counting(gemv_module, "decode_gemv", calls)
    counting(gemv_module, "decode_gemv_rms_norm", calls)
    counting(rotary_cache_module, "rotary_and_cache", calls)
    tokens_off, logits_off = greedy(model, spec)
    calls_off = dict(calls)
    swapped = use_decode_gemv(model, tuple(PROJECTIONS))
    for attn in attns:
        attn.fuse_rotary = True
    tokens_on, logits_on = greedy(model, spec)
    calls_on = {k: v - calls_off.get(k, 0) for k, v in calls.items()}
    # then the post-attention norm folded into o_proj and gate_up as well (WARD_NORM_GEMV=1)
    fused_layers, folded_layers = enable_norm_fusion(model)
    tokens_norm, logits_norm = greedy(model, spec)
    return {"same_tokens": tokens_on == tokens_off, "tokens": tokens_on, "rel_err": rel_err(logits_on, logits_off),
            "swapped": swapped, "calls_off": calls_off, "calls_on": calls_on,
            "norm_fused_layers": fused_layers, "norm_folded_layers": folded_layers, "norm_same_tokens": tokens_norm == tokens_off,
            "norm_rel_err": rel_err(logits_norm, logits_off),
            "calls_norm": {k: v - calls_off.get(k, 0) - calls_on.get(k, 0) for k, v in calls.items()}}


def run_w8a8() -> dict:
    """The FP8 Llama model decoding with ``WARD_FP8_GEMV_W8A8`` (``normed``, ``all``) against the W8A8
    path for every row (``torch._scaled_mm``, which runs on the CPU; the layers quantize with torch
    operations as the interpreter's e4m3 casts differ from the card's). With ``all`` the decode rows
    take the same quantized operands through the e4m3-by-e4m3 GEMV: the same tokens, logits equal
    to float32 rounding. With ``normed`` o_proj and down_proj widen instead (their inputs not
    quantized), so only the tokens and the launches are compared. Counts the GEMV's launches over
    e4m3 rows (``x_scale``) and over float rows per decode run, those with the SiLU epilogue apart."""
    from worker.model.quant import linear

    linear._cuda_fp8_ok = lambda device: True
    linear.FP8_QUANT_KERNEL = False
    torch.manual_seed(0)
    hf = _random_hf(CONFIGS["llama-fp8"]())
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        spec = load_spec(d)

        def fresh():
            model = build_model(spec, TritonBackend(), torch.device("cpu"), torch.float32, 64, model_ops)
            load_weights(model, spec, d)
            finalize_quantized(model, spec, QuantConfig("fp8", "fp8"))
            return model

        tokens_ref, logits_ref = greedy(fresh(), spec)
        launches: Counter = Counter()
        original = gemv_module.decode_gemv

        def counted(*args, **kwargs):
            kind = "e4m3_rows" if kwargs.get("x_scale") is not None else "float_rows"
            launches[kind + ("_silu" if kwargs.get("silu") else "")] += 1
            return original(*args, **kwargs)

        gemv_module.decode_gemv = counted
        result = {}
        for mode in ("normed", "all"):
            os.environ["WARD_FP8_GEMV_W8A8"] = mode
            model = fresh()
            use_decode_gemv(model, tuple(PROJECTIONS))
            launches.clear()
            tokens, logits = greedy(model, spec)
            result[mode] = {"same_tokens": tokens == tokens_ref, "rel_err": rel_err(logits, logits_ref),
                            "launches": dict(launches)}
        gemv_module.decode_gemv = original
        os.environ.pop("WARD_FP8_GEMV_W8A8", None)
    return result


if __name__ == "__main__":
    if sys.argv[1:] == ["w8a8"]:
        torch.set_num_threads(1)
        print(json.dumps(run_w8a8()))
        sys.exit(0)
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and steady on a busy machine
    print(json.dumps({name: run(name) for name in sys.argv[1:] or CONFIGS}))
