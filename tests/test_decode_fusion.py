"""The decode fusions (projections through the Triton decode GEMV with the SiLU epilogue, rotary fused
into the KV-cache write) change kernels, not results.

CPU: tiny random models of several families decode greedily through the CUDA code path in Triton's
interpreter (a fresh process, ``decode_fusion_interpreter.py``) with the fusions off and on: same
tokens, logits equal to float32 rounding, and each fused kernel seen to run. Plain-Python checks of
the layer swap. GPU (``@pytest.mark.gpu``): the default model through the engine in bf16 with the
fusions on and off (``WARD_DECODE_GEMV=0``, ``WARD_ROPE_CACHE_FUSION=0``), teacher-forced against
the float32 transformers model as ``test_gpu_engine.py`` does.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from interpreter_run import run_interpreter_script
from torch import nn

from worker.model.decode_linear import DecodeGemvLinear, use_decode_gemv

ROOT = Path(__file__).resolve().parent.parent
# family: projections swapped (qkv, o, gate_up, down per dense layer; qkv and o per MoE layer; the
# llama model has two layers)
SWAPPED = {"llama": 8, "qwen2-qkv-bias": 4, "phi3-partial-rotary": 4, "gemma2-gelu-mlp": 4, "qwen3-moe": 4,
           "llama-fp8": 8, "gemma2-fp8": 4}
# layers whose post-attention norm the GEMVs take over, and of those the ones that also fold the next
# layer's input norm (enable_norm_fusion)
NORM_FUSED = {"llama": 2, "qwen2-qkv-bias": 1, "phi3-partial-rotary": 1, "gemma2-gelu-mlp": 0, "qwen3-moe": 0,
              "llama-fp8": 0, "gemma2-fp8": 0}  # the FP8 layers' GEMV takes no norm
NORM_FOLDED = {"llama": 1, "qwen2-qkv-bias": 0, "phi3-partial-rotary": 0, "gemma2-gelu-mlp": 0, "qwen3-moe": 0,
               "llama-fp8": 0, "gemma2-fp8": 0}


@pytest.fixture(scope="module")
def interpreter_runs() -> dict:
    pytest.importorskip("triton")
    return run_interpreter_script("decode_fusion_interpreter.py", *SWAPPED)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the engine test below runs the compiled path")
@pytest.mark.parametrize("family", list(SWAPPED))
def test_fused_decode_gives_the_same_greedy_tokens_in_the_interpreter(family: str, interpreter_runs: dict) -> None:
    run = interpreter_runs[family]
    assert run["same_tokens"], run
    assert run["rel_err"] < 1e-5, run
    assert run["swapped"] == SWAPPED[family]
    assert run["calls_off"] == {}  # off: neither fused kernel ran
    # on: 3 decode steps of 2 rows through the GEMV (the 17-row prefill stays on F.linear), and the
    # rotary cache write in every attention call (prefill included)
    assert run["calls_on"]["decode_gemv"] == 3 * SWAPPED[family]
    # Gemma's gate_up takes the GeGLU epilogue each decode step (its one layer); no other family does
    assert run["calls_on"].get("decode_gemv_gelu_tanh", 0) == (3 if family.startswith("gemma") else 0), run
    assert run["calls_on"]["rotary_and_cache"] >= 4
    # the post-attention norm folded into o_proj and gate_up on every dense Llama-family layer, never
    # Gemma's (its norms differ) or an MoE layer (no gate_up), and the next layer's input norm into
    # down_proj and qkv; same tokens, and a normalising GEMV ran once a decode step for each fold
    assert (run["norm_fused_layers"], run["norm_folded_layers"]) == (NORM_FUSED[family], NORM_FOLDED[family]), run
    assert run["norm_same_tokens"], run
    assert run["norm_rel_err"] < 1e-5, run
    calls = run["calls_norm"].get("decode_gemv_rms_norm", 0)
    assert calls == 3 * (NORM_FUSED[family] + NORM_FOLDED[family]), run


def test_swapped_layer_shares_the_weights_and_falls_back_off_the_gpu() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(32, 48, bias=True)
    layer = DecodeGemvLinear(linear)
    assert layer.weight is linear.weight and layer.bias is linear.bias  # no copy
    assert isinstance(layer, nn.Linear) and (layer.in_features, layer.out_features) == (32, 48)
    x = torch.randn(3, 32)
    if os.environ.get("TRITON_INTERPRET") != "1":  # a CPU tensor takes F.linear outside the interpreter
        assert torch.equal(layer(x), linear(x))


def test_swap_is_off_with_the_environment_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARD_DECODE_GEMV", "0")
    model = nn.Module()
    layer = nn.Module()
    layer.mlp = nn.Module()
    layer.mlp.down_proj = nn.Linear(8, 8)
    model.layers = nn.ModuleList([layer])
    assert use_decode_gemv(model) == 0
    assert type(model.layers[0].mlp.down_proj) is nn.Linear


def test_the_environment_switch_names_the_projections_to_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = nn.Module()
    layer.mlp = nn.Module()
    layer.mlp.gate_up_proj, layer.mlp.down_proj = nn.Linear(8, 16), nn.Linear(8, 8)
    model = nn.Module()
    model.layers = nn.ModuleList([layer])
    monkeypatch.setenv("WARD_DECODE_GEMV", "gate_up")
    assert use_decode_gemv(model) == 1
    assert isinstance(layer.mlp.gate_up_proj, DecodeGemvLinear) and type(layer.mlp.down_proj) is nn.Linear
    monkeypatch.setenv("WARD_DECODE_GEMV", "gate_up,mlp")
    with pytest.raises(ValueError, match="unknown projections"):
        use_decode_gemv(model)


def test_fp8_gemv_rows_bound_which_rows_read_the_e4m3_weights_through_the_gemv(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WARD_FP8_GEMV_ROWS``: an FP8 projection's GEMV takes at most that many rows (more go to W8A8,
    where the norm and the SiLU quantize the input); a value outside 0..8 is refused by name."""
    from worker.model import decode_linear
    from worker.model.decode_linear import Fp8DecodeGemvLinear, fp8_gemv_max_rows
    from worker.model.quant.config import QuantConfig
    from worker.model.quant.linear import Fp8Linear

    monkeypatch.setattr(decode_linear, "_INTERPRETED", True)  # CPU tensors as the GEMV's, as in the interpreter
    monkeypatch.delenv("WARD_FP8_GEMV_ROWS", raising=False)
    fp8 = Fp8Linear.from_float(nn.Linear(32, 48, dtype=torch.bfloat16), QuantConfig("fp8", "fp8"))
    assert fp8_gemv_max_rows() == 8
    monkeypatch.setenv("WARD_FP8_GEMV_ROWS", "4")
    layer = Fp8DecodeGemvLinear(fp8)
    assert layer.max_rows == 4
    assert layer._gemv_rows(torch.zeros(4, 32, dtype=torch.bfloat16)) is not None
    assert layer._gemv_rows(torch.zeros(5, 32, dtype=torch.bfloat16)) is None
    for bad in ("9", "-1", "four"):
        monkeypatch.setenv("WARD_FP8_GEMV_ROWS", bad)
        with pytest.raises(ValueError, match="WARD_FP8_GEMV_ROWS"):
            fp8_gemv_max_rows()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the GPU cases run the compiled path")
def test_fp8_decode_through_the_w8a8_gemv_in_the_interpreter() -> None:
    """The FP8 Llama model's decode steps with ``WARD_FP8_GEMV_W8A8``: ``all`` gives the W8A8 path's
    own logits (the same quantized operands through the e4m3-by-e4m3 GEMV instead of
    ``torch._scaled_mm``) and tokens; ``normed`` the same tokens, with gate_up's e4m3 rows through the
    SiLU epilogue and o_proj and down_proj widening (2 layers x 3 decode steps)."""
    pytest.importorskip("triton")
    runs = run_interpreter_script("decode_fusion_interpreter.py", "w8a8")
    launches = 2 * 3
    assert runs["all"]["same_tokens"] and runs["all"]["rel_err"] < 1e-5, runs["all"]
    assert runs["all"]["launches"] == {"e4m3_rows": 4 * launches}, runs["all"]
    assert runs["normed"]["same_tokens"], runs["normed"]
    assert runs["normed"]["launches"] == {"e4m3_rows": launches, "e4m3_rows_silu": launches,
                                          "float_rows": 2 * launches}, runs["normed"]


def test_fp8_gemv_w8a8_setting_picks_the_projections_that_take_quantized_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WARD_FP8_GEMV_W8A8``: ``normed`` gives qkv and gate_up the e4m3-by-e4m3 GEMV (their rows come
    quantized from the norm before them; gate_up keeps its SiLU epilogue since down_proj widens),
    ``all`` every projection (gate_up then hands down_proj quantized rows: no epilogue), ``0`` none;
    unset means ``normed``. ``normed`` passes over a layer whose norms write no e4m3 rows (Gemma's:
    no ``fp8_normed_projections``), where the projections would quantize their own input. A layer with
    a static input scale never takes it; other values are refused by name."""
    from worker.model import decode_linear
    from worker.model.decode_linear import Fp8DecodeGemvLinear, fp8_gemv_w8a8_setting
    from worker.model.quant import linear
    from worker.model.quant.config import QuantConfig
    from worker.model.quant.linear import Fp8Linear

    monkeypatch.setattr(decode_linear, "_INTERPRETED", True)
    monkeypatch.setattr(linear, "_cuda_fp8_ok", lambda device: True)

    def fp8(n_in: int, n_out: int) -> Fp8Linear:
        return Fp8Linear.from_float(nn.Linear(n_in, n_out, bias=False, dtype=torch.bfloat16), QuantConfig("fp8", "fp8"))

    def model(norms_quantize: bool) -> nn.Module:
        layer = nn.Module()
        if norms_quantize:  # as the Llama family's DecoderLayer declares
            layer.fp8_normed_projections = ("qkv", "gate_up")
        layer.self_attn, layer.mlp = nn.Module(), nn.Module()
        layer.self_attn.qkv_proj, layer.self_attn.o_proj = fp8(32, 96), fp8(32, 32)
        layer.mlp.gate_up_proj, layer.mlp.down_proj = fp8(32, 128), fp8(64, 32)
        holder = nn.Module()
        holder.layers = nn.ModuleList([layer])
        return holder

    def roles(mode: str | None, norms_quantize: bool = True) -> dict[str, tuple[bool, bool]]:
        if mode is None:
            monkeypatch.delenv("WARD_FP8_GEMV_W8A8", raising=False)
        else:
            monkeypatch.setenv("WARD_FP8_GEMV_W8A8", mode)
        m = model(norms_quantize)
        assert use_decode_gemv(m, ("qkv", "o", "gate_up", "down")) == 4
        layer = m.layers[0]
        found = {"qkv": layer.self_attn.qkv_proj, "o": layer.self_attn.o_proj, "gate_up": layer.mlp.gate_up_proj,
                 "down": layer.mlp.down_proj}
        assert all(isinstance(p, Fp8DecodeGemvLinear) for p in found.values())
        return {name: (p.w8a8, p.silu_epilogue_w8a8) for name, p in found.items()}

    off = {"qkv": (False, False), "o": (False, False), "gate_up": (False, False), "down": (False, False)}
    assert roles("0") == off
    assert roles(None) == roles("normed") == {**off, "qkv": (True, False), "gate_up": (True, True)}
    every = {"qkv": (True, False), "o": (True, False), "gate_up": (True, False), "down": (True, False)}
    assert roles("all") == roles("all", norms_quantize=False) == every
    assert roles(None, norms_quantize=False) == roles("normed", norms_quantize=False) == off
    rows = torch.zeros(4, 32, dtype=torch.bfloat16)
    assert Fp8DecodeGemvLinear(fp8(32, 48), w8a8=True).takes_fp8_activation(4, rows)
    assert not Fp8DecodeGemvLinear(fp8(32, 48)).takes_fp8_activation(4, rows)
    static = fp8(32, 48)
    static.input_scale = nn.Parameter(torch.ones(1), requires_grad=False)
    assert not Fp8DecodeGemvLinear(static, w8a8=True).w8a8
    for bad in ("1", "yes"):
        monkeypatch.setenv("WARD_FP8_GEMV_W8A8", bad)
        with pytest.raises(ValueError, match="WARD_FP8_GEMV_W8A8"):
            fp8_gemv_w8a8_setting()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_engine_with_fusions_on_and_off_on_gpu_bf16(default_model_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_gpu_engine import _worst_gap
    from tests.prompts import PROMPTS
    from worker import LLM, SamplingParams

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    hf = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).cuda().eval()
    prompts = [tok(p).input_ids for p in PROMPTS][:8]  # a batch of at most 8: the GEMV's size
    gaps, tokens, swapped, norm_fused = {}, {}, {}, {}
    for label, value, norm in (("off", "0", "0"), ("on", "1", "0"), ("on+norm", "1", "1")):
        monkeypatch.setenv("WARD_DECODE_GEMV", value)
        monkeypatch.setenv("WARD_ROPE_CACHE_FUSION", value)
        monkeypatch.setenv("WARD_NORM_GEMV", norm)
        llm = LLM(model=default_model_dir, dtype="bfloat16", device="cuda", gpu_memory_utilization=0.3)
        model = llm.engine.runner.model
        swapped[label] = sum(isinstance(m, DecodeGemvLinear) for m in model.modules())
        norm_fused[label] = (sum(getattr(layer, "norm_fusion", False) for layer in model.layers),
                             sum(getattr(layer, "fold_output", False) for layer in model.layers))
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=48))
        tokens[label] = [o.outputs[0].token_ids for o in outs]
        gaps[label] = _worst_gap(hf, prompts, tokens[label])
        del llm
        torch.cuda.empty_cache()
    same = sum(a == b for a, b in zip(tokens["on"], tokens["off"]))
    print(f"identical greedy generations {same}/{len(prompts)}; worst gap off {gaps['off']:.3f}, on {gaps['on']:.3f}")
    assert swapped["off"] == 0 and swapped["on"] > 0
    assert norm_fused["on"] == (0, 0) and norm_fused["on+norm"] == (len(model.layers), len(model.layers) - 1)
    assert gaps["on"] <= max(0.1, 1.5 * gaps["off"]), gaps
    assert gaps["on+norm"] <= max(0.1, 1.5 * gaps["off"]), gaps
