"""Quantized checkpoints as model hubs ship them: each test writes a tiny random Llama in one
format's exact on-disk layout (FP8 with 128x128 block scales, compressed-tensors FP8 per channel and
per tensor, AWQ GEMM packing, GPTQ with and without act-order at group sizes 32/64/128) beside the
same model with its weights de-quantized to float32, then checks that Ward loads the quantized one
and gives the same prefill logits and greedy tokens as the de-quantized one. Malformed
quantization configs are a ModelLoadError naming the field.

The writers here are deliberately independent of worker/model/quant (loops over words and nibbles),
so a packing mistake on either side shows.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from worker.errors import ModelLoadError
from worker.llm import LLM
from worker.model.quant.config import parse_quant_config, resolve_quant_config
from worker.sampling_params import SamplingParams

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPTS = [[3, 17, 250, 9, 44], [100, 101, 7], [5, 400, 12, 61, 88, 2, 31]]
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_state(cfg) -> dict[str, torch.Tensor]:
    """Every weight of a transformers model of ``cfg`` random (norms near one), seeded, in float32."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.05 if "norm" in name else 0.1)
    return {k: v.float().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def base():
    """A tiny Llama: hidden 128 (group sizes up to 128), q/k/v 128 rows each (FP8 blocks), 2 layers."""
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=64, vocab_size=512, max_position_embeddings=128,
                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    return cfg, random_state(cfg)


def _write(path, cfg: LlamaConfig, tensors: dict, quantization_config: dict | None,
           architectures=("LlamaForCausalLM",)) -> str:
    path.mkdir(parents=True, exist_ok=True)
    config = cfg.to_dict()
    config["architectures"] = list(architectures)
    config.pop("quantization_config", None)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return str(path)


# ---- writers of each layout (W is Hugging Face's [out, in]) -----------------------------------
def fp8_block(w: torch.Tensor, bn: int = 128, bk: int = 128):
    out_f, in_f = w.shape
    scale_inv = torch.empty(math.ceil(out_f / bn), math.ceil(in_f / bk))
    q = torch.empty(out_f, in_f, dtype=torch.float8_e4m3fn)
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            block = w[i * bn : (i + 1) * bn, j * bk : (j + 1) * bk]
            s = block.abs().max() / 448.0
            scale_inv[i, j] = s
            q[i * bn : (i + 1) * bn, j * bk : (j + 1) * bk] = (block / s).to(torch.float8_e4m3fn)
    deq = q.float() * scale_inv.repeat_interleave(bn, 0)[:out_f].repeat_interleave(bk, 1)[:, :in_f]
    return {"weight": q, "weight_scale_inv": scale_inv}, deq


def fp8_scaled(w: torch.Tensor, per_channel: bool):
    amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().max().reshape(1)
    scale = amax / 448.0
    q = (w / (scale if per_channel else scale[0])).to(torch.float8_e4m3fn)
    deq = q.float() * (scale if per_channel else scale[0])
    return {"weight": q, "weight_scale": scale}, deq


def int_quantize(wt: torch.Tensor, group_of_row: torch.Tensor, num_groups: int, bits: int = 4):
    """Asymmetric min-max quantization of W^T [in, out] per (group, column): q, zeros, scales [g, out]."""
    top = (1 << bits) - 1
    scales = torch.empty(num_groups, wt.shape[1])
    zeros = torch.empty(num_groups, wt.shape[1], dtype=torch.int64)
    q = torch.empty_like(wt, dtype=torch.int64)
    for g in range(num_groups):
        rows = group_of_row == g
        lo, hi = wt[rows].min(0).values.clamp(max=0), wt[rows].max(0).values.clamp(min=0)
        s = ((hi - lo) / top).clamp(min=1e-6).half().float()  # scales ship as float16
        z = torch.round(-lo / s).clamp(0, top).long()
        scales[g], zeros[g] = s, z
        q[rows] = (torch.round(wt[rows] / s) + z).clamp(0, top).long()
    deq_t = (q - zeros[group_of_row]).float() * scales[group_of_row]
    return q, zeros, scales, deq_t


def pack_word(values: list[int], bits: int) -> int:
    word = 0
    for i, v in enumerate(values):
        word |= int(v) << (bits * i)
    return word - (1 << 32) if word >= 1 << 31 else word  # as int32


def awq(w: torch.Tensor, group: int):
    wt = w.t().contiguous()  # [in, out]
    rows = torch.arange(wt.shape[0]) // group
    q, zeros, scales, deq_t = int_quantize(wt, rows, wt.shape[0] // group)

    def pack(m):  # [R, C] -> int32 [R, C/8], nibble i holds column AWQ_ORDER[i] of each eight
        out = torch.empty(m.shape[0], m.shape[1] // 8, dtype=torch.int32)
        for r in range(m.shape[0]):
            for c in range(m.shape[1] // 8):
                out[r, c] = pack_word([m[r, c * 8 + AWQ_ORDER[i]] for i in range(8)], 4)
        return out

    tensors = {"qweight": pack(q), "qzeros": pack(zeros), "scales": scales.half()}
    return tensors, deq_t.t()


def gptq(w: torch.Tensor, group: int, act_order: bool, bits: int = 4, seed: int = 0, v2: bool = False):
    wt = w.t().contiguous()
    n_in = wt.shape[0]
    if act_order:  # rows quantized in a permuted order: g_idx[perm[j]] = j // group
        perm = torch.randperm(n_in, generator=torch.Generator().manual_seed(seed))
        g_idx = torch.empty(n_in, dtype=torch.int64)
        g_idx[perm] = torch.arange(n_in) // group
    else:
        g_idx = torch.arange(n_in) // group
    q, zeros, scales, deq_t = int_quantize(wt, g_idx, n_in // group, bits)
    pf = 32 // bits
    qweight = torch.empty(n_in // pf, wt.shape[1], dtype=torch.int32)
    for r in range(n_in // pf):  # input rows r*pf .. r*pf+pf-1 in one word, lowest bits first
        for c in range(wt.shape[1]):
            qweight[r, c] = pack_word([q[r * pf + i, c] for i in range(pf)], bits)
    stored = zeros if v2 else zeros - 1  # GPTQ v1: zero points are stored minus one
    qzeros = torch.empty(stored.shape[0], stored.shape[1] // pf, dtype=torch.int32)
    for g in range(stored.shape[0]):
        for c in range(stored.shape[1] // pf):
            qzeros[g, c] = pack_word([stored[g, c * pf + i] & ((1 << bits) - 1) for i in range(pf)], bits)
    tensors = {"qweight": qweight, "qzeros": qzeros, "scales": scales.half(), "g_idx": g_idx.to(torch.int32)}
    return tensors, deq_t.t()


FORMATS = {
    "fp8-block": ({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                   "weight_block_size": [128, 128]}, fp8_block),
    "ct-fp8-channel": ("channel", lambda w: fp8_scaled(w, True)),
    "ct-fp8-tensor": ("tensor", lambda w: fp8_scaled(w, False)),
    "awq-g128": ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
                 lambda w: awq(w, 128)),
    "awq-g32": ({"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"},
                lambda w: awq(w, 32)),
    "gptq-g128": ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": False},
                  lambda w: gptq(w, 128, False)),
    "gptq-g64-act-order": ({"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": True, "sym": False},
                           lambda w: gptq(w, 64, True)),
    "gptq-g32-act-order": ({"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True, "sym": False},
                           lambda w: gptq(w, 32, True, seed=3)),
    "gptq-8bit-g128-v2": ({"quant_method": "gptq", "bits": 8, "group_size": 128, "desc_act": False,
                           "checkpoint_format": "gptq_v2"}, lambda w: gptq(w, 128, False, bits=8, v2=True)),
}


def compressed_tensors(strategy: str) -> dict:
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
            "config_groups": {"group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "strategy": strategy, "symmetric": True, "dynamic": False},
                "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": True,
                                      "dynamic": True}}}}


def write_pair(tmp_path_factory, base, fmt: str) -> tuple[str, str]:
    cfg, state = base
    qcfg, writer = FORMATS[fmt]
    if isinstance(qcfg, str):
        qcfg = compressed_tensors(qcfg)
    quantized, dequantized = {}, {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and module.rpartition(".")[2] in PROJ:
            tensors, deq = writer(t)
            quantized.update({f"{module}.{k}": v.contiguous() for k, v in tensors.items()})
            dequantized[name] = deq.float().contiguous()
        else:
            quantized[name] = dequantized[name] = t
    root = tmp_path_factory.mktemp(fmt)
    return _write(root / "quantized", cfg, quantized, qcfg), _write(root / "dequantized", cfg, dequantized, None)


def _greedy(model_dir: str, **kw) -> tuple[list[list[int]], object]:
    llm = LLM(model=model_dir, device="cpu", dtype="float32", block_size=4, num_kv_blocks=64, max_model_len=64,
              enable_prefix_caching=False, **kw)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], SamplingParams(max_tokens=8, temperature=0.0,
                                                                                    ignore_eos=True))
    return [o.outputs[0].token_ids for o in outs], llm


def _prefill_logits(llm, tokens: list[int]) -> torch.Tensor:
    """One prefill through the engine's model over a fresh paged cache of the engine's KV dtype."""
    from tests.paged_driver import PagedDriver

    runner = llm.engine.runner
    drv = PagedDriver(runner.model, runner.spec, num_blocks=32, block_size=4, dtype=runner.dtype, device=runner.device)
    if runner.kv_dtype != runner.dtype:  # an FP8 cache: the model writes and reads e4m3
        drv.kv = [(torch.zeros_like(k, dtype=runner.kv_dtype), torch.zeros_like(v, dtype=runner.kv_dtype))
                  for k, v in drv.kv]
    return drv.step([("s", tokens, 0)])[0]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_quantized_checkpoint_gives_the_dequantized_models_greedy_tokens(tmp_path_factory, base, fmt):
    quantized_dir, reference_dir = write_pair(tmp_path_factory, base, fmt)
    got, llm = _greedy(quantized_dir)
    want, ref = _greedy(reference_dir)
    assert got == want
    a, b = _prefill_logits(llm, PROMPTS[2]), _prefill_logits(ref, PROMPTS[2])
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    report = llm.engine.runner.weight_report
    assert report["quantized_layers"] == 2 * 4  # qkv, o, gate_up, down in each layer
    assert report["weight_bytes"] < ref.engine.runner.weight_report["weight_bytes"]


def test_fp8_at_load_quantizes_a_float_checkpoint(tmp_path_factory, base):
    """``quantization="fp8"`` on a float checkpoint: per-channel e4m3, the same as that checkpoint with
    every projection rounded through per-channel e4m3 by hand."""
    cfg, state = base
    rounded = {}
    for name, t in state.items():
        module = name.rpartition(".")[0]
        rounded[name] = fp8_scaled(t, True)[1] if module.rpartition(".")[2] in PROJ else t
    root = tmp_path_factory.mktemp("float")
    model_dir = _write(root / "float", cfg, state, None)
    got, llm = _greedy(model_dir, quantization="fp8")
    want, ref = _greedy(_write(root / "rounded", cfg, rounded, None))
    assert llm.engine.runner.weight_report["format"] == "fp8"
    assert got == want
    a, b = _prefill_logits(llm, PROMPTS[2]), _prefill_logits(ref, PROMPTS[2])
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_fp8_inputs_quantized_by_the_norms_and_the_silu_give_the_layers_own_result(tmp_path_factory, base,
                                                                                  monkeypatch):
    """``WARD_FP8_FUSED_INPUT``'s wiring: the RMSNorms hand qkv and gate_up their input already
    quantized, and the SiLU-and-mul hands it to down_proj (``Fp8Activation`` through the layers'
    calls). Run on the CPU, where ``torch._scaled_mm`` runs as well, with the torch ops quantizing as
    the layers themselves do: the logits are the bits the layers give when they quantize their inputs
    themselves, and the fused path did run (counted)."""
    from worker.model import ops
    from worker.model.quant import linear

    cfg, state = base
    model_dir = _write(tmp_path_factory.mktemp("fused") / "float", cfg, state, None)
    monkeypatch.setattr(linear, "_cuda_fp8_ok", lambda device: True)  # W8A8 through _scaled_mm on the CPU
    monkeypatch.setattr(linear, "FP8_QUANT_KERNEL", False)  # the layers quantize with torch operations
    calls = {"norm": 0, "silu": 0}

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper

    monkeypatch.setattr(ops, "rms_norm_fp8", counted("norm", ops.rms_norm_fp8))
    monkeypatch.setattr(ops, "silu_and_mul_fp8", counted("silu", ops.silu_and_mul_fp8))
    llm = LLM(model=model_dir, device="cpu", dtype="float32", block_size=4, num_kv_blocks=64, max_model_len=64,
              enable_prefix_caching=False, quantization="fp8")
    logits = {}
    for fused in (False, True):
        monkeypatch.setattr(linear, "FP8_FUSED_INPUT", fused)
        logits[fused] = _prefill_logits(llm, PROMPTS[2])
    assert calls == {"norm": 2 * cfg.num_hidden_layers, "silu": cfg.num_hidden_layers}
    assert torch.equal(logits[True], logits[False])
    assert logits[True].abs().max() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_fp8_inputs_quantized_by_the_norm_and_silu_kernels_on_cuda_give_the_same_logits(tmp_path_factory, base,
                                                                                       monkeypatch):
    """The same on the card, in bfloat16: the Triton norm and SiLU kernels quantizing their outputs
    (one launch each) against the layers' own one-kernel quantization, over a 12-token prompt (more
    rows than the decode GEMV takes): the same logits but for the last-bit effects of the norm's sum
    taken in another order inside the larger kernel (none at this width on an H100), far inside the
    W8A8 rounding itself (7-11% of the largest logit against the float model, above)."""
    from worker.kernels import model_ops
    from worker.model.quant import linear

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need Ada or Hopper")
    cfg, state = base
    model_dir = _write(tmp_path_factory.mktemp("fused-cuda") / "float", cfg, state, None)
    llm = LLM(model=model_dir, device="cuda", dtype="bfloat16", block_size=16, num_kv_blocks=64, max_model_len=64,
              enforce_eager=True, quantization="fp8")
    calls = []
    norm_fp8 = model_ops.rms_norm_fp8
    monkeypatch.setattr(model_ops, "rms_norm_fp8", lambda *args: calls.append(1) or norm_fp8(*args))
    logits = {}
    for fused in (False, True):
        monkeypatch.setattr(linear, "FP8_FUSED_INPUT", fused)
        logits[fused] = _prefill_logits(llm, PROMPTS[2] + PROMPTS[0]).float().cpu()
    assert len(calls) == 2 * cfg.num_hidden_layers
    assert (logits[True] - logits[False]).abs().max() <= 0.01 * logits[False].abs().max()


def fp8_static(w: torch.Tensor):
    """Per-tensor e4m3 with a static activation scale (``activation_scheme: static``)."""
    tensors, deq = fp8_scaled(w, False)
    return {**tensors, "input_scale": torch.tensor([0.05])}, deq


PHI3_FORMATS = {**FORMATS, "fp8-static": ({"quant_method": "fp8", "activation_scheme": "static"}, fp8_static)}


@pytest.mark.parametrize("fmt", ["gptq-g64-act-order", "awq-g128", "fp8-block", "fp8-static"])
def test_phi3_checkpoints_quantize_the_fused_projections_as_they_ship(tmp_path_factory, fmt):
    """Phi-3 checkpoints hold ``qkv_proj`` and ``gate_up_proj`` fused, quantized whole: each of their
    tensors fills every shard of Ward's fused layer, GPTQ's input order and a static input scale
    included (these were refused as missing), and the model gives the de-quantized one's tokens."""
    from transformers import Phi3Config

    cfg = Phi3Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=128, rms_norm_eps=1e-6,
                     pad_token_id=0, tie_word_embeddings=False)
    qcfg, writer = PHI3_FORMATS[fmt]
    quantized, dequantized = {}, {}
    for name, t in random_state(cfg).items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and module.rpartition(".")[2] in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            tensors, deq = writer(t)
            quantized.update({f"{module}.{k}": v.contiguous() for k, v in tensors.items()})
            dequantized[name] = deq.float().contiguous()
        else:
            quantized[name] = dequantized[name] = t
    root = tmp_path_factory.mktemp(f"phi3-{fmt}")
    arch = ("Phi3ForCausalLM",)
    got, llm = _greedy(_write(root / "quantized", cfg, quantized, qcfg, arch))
    want, ref = _greedy(_write(root / "dequantized", cfg, dequantized, None, arch))
    assert got == want
    a, b = _prefill_logits(llm, PROMPTS[2]), _prefill_logits(ref, PROMPTS[2])
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    qkv = llm.engine.runner.model.layers[0].self_attn.qkv_proj
    if fmt == "fp8-static":
        assert qkv.input_scale.tolist() == [pytest.approx(0.05)]


def test_quantization_none_refuses_a_quantized_checkpoint(tmp_path_factory, base):
    quantized_dir, _ = write_pair(tmp_path_factory, base, "ct-fp8-tensor")
    with pytest.raises(ModelLoadError, match="quantized"):
        LLM(model=quantized_dir, device="cpu", dtype="float32", num_kv_blocks=8, quantization="none")


@pytest.mark.parametrize("config, field", [
    ({"bits": 4}, "quant_method"),
    ({"quant_method": "bitsandbytes"}, "quant_method"),
    ({"quant_method": "fp8", "weight_block_size": [128]}, "weight_block_size"),
    ({"quant_method": "fp8", "fmt": "e5m2"}, "fmt"),
    ({"quant_method": "awq", "bits": 3, "group_size": 128}, "bits"),
    ({"quant_method": "awq", "bits": 4, "group_size": 100}, "group_size"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "version"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": "yes"}, "desc_act"),
    ({"quant_method": "gptq", "bits": 4}, "group_size"),
    ({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {}}, "format"),
    ({**compressed_tensors("group")}, "strategy"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "lm_head": True}, "lm_head"),
    ({"quant_method": "ward-int", "bits": 4, "group_size": 32, "zero_format": "nf4"}, "zero_format"),
])
def test_malformed_quantization_config_names_the_field(config, field):
    with pytest.raises(ModelLoadError, match=field):
        parse_quant_config(config)


def test_malformed_quantization_config_is_refused_at_load(tmp_path_factory, base):
    cfg, state = base
    model_dir = _write(tmp_path_factory.mktemp("bad"), cfg, state, {"quant_method": "gptq", "bits": 4,
                                                                     "group_size": 48})
    with pytest.raises(ModelLoadError, match="group_size"):
        LLM(model=model_dir, device="cpu", dtype="float32", num_kv_blocks=8)


def test_fp8_asked_for_an_int4_checkpoint_is_refused():
    class Cfg:
        quantization_config = {"quant_method": "awq", "bits": 4, "group_size": 128}
    with pytest.raises(ModelLoadError, match="awq"):
        resolve_quant_config("fp8", Cfg())


@pytest.mark.parametrize("quant", [
    {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    {"quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": False, "sym": True},
])
def test_dummy_weights_of_an_int4_shape_load_in_the_checkpoint_layout(tmp_path, quant):
    """Benchmarks of 8B/70B INT4 shapes have no checkpoint: random codes in the checkpoint's layout go
    through the same conversion, and de-quantize to small weights."""
    from ward.benchmarks.models import TINY_LLAMA
    from worker.model.quant.linear import IntLinear

    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_LLAMA, vocab_size=512, quantization_config=quant)))
    llm = LLM(model=str(tmp_path), load_format="dummy", device="cpu", max_model_len=64, num_kv_blocks=16)
    layers = [m for m in llm.engine.runner.model.modules() if isinstance(m, IntLinear)]
    assert len(layers) == 2 * TINY_LLAMA["num_hidden_layers"] * 2  # qkv, o, gate_up, down per layer
    for layer in layers:
        w = layer.dequantized_weight(torch.float32)
        assert w.shape == (layer.in_features, layer.out_features) and 0 < w.abs().max() <= 0.033
    assert llm.engine.runner.weight_report["format"] == quant["quant_method"]
    out = llm.generate([{"prompt_token_ids": list(range(10, 30))}],
                       SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4


def test_quantized_layers_replace_the_float_ones_before_any_weight_memory_is_taken(tmp_path, monkeypatch):
    """A 70B INT4 model fits one card only if its float projections are never allocated: the swap to
    quantized layers happens while the model is still on the meta device."""
    from ward.benchmarks.models import TINY_LLAMA
    from worker.model.quant.linear import IntLinear
    from worker.runner import model_runner

    seen: list[set[str]] = []
    real = model_runner.quantize_model

    def spy(model, spec, qc):
        seen.append({t.device.type for t in model.parameters()})
        return real(model, spec, qc)

    monkeypatch.setattr(model_runner, "quantize_model", spy)
    quant = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_LLAMA, vocab_size=512, quantization_config=quant)))
    llm = LLM(model=str(tmp_path), load_format="dummy", device="cpu", max_model_len=64, num_kv_blocks=16)
    assert seen == [{"meta"}]
    model = llm.engine.runner.model
    assert {t.device.type for t in list(model.parameters()) + list(model.buffers())} == {"cpu"}
    assert sum(isinstance(m, IntLinear) for m in model.modules()) == 2 * TINY_LLAMA["num_hidden_layers"] * 2
    out = llm.generate([{"prompt_token_ids": list(range(10, 30))}],
                       SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4


def test_startup_report_gives_format_bytes_and_kv_capacity(tmp_path_factory, base):
    from worker.model.loader import checkpoint_files
    from worker.runner.memory import checkpoint_weight_bytes

    quantized_dir, reference_dir = write_pair(tmp_path_factory, base, "awq-g128")
    _, llm = _greedy(quantized_dir, kv_cache_dtype="fp8")
    report = llm.engine.runner.startup_report
    assert report["weight_format"] == "awq" and report["kv_cache_dtype"] == "float8_e4m3fn"
    assert report["kv_blocks"] == 64 and report["kv_tokens"] == 64 * 4
    assert report["kv_bytes"] == 64 * llm.engine.runner.kv_block_bytes()
    # the header-only estimate: packed int32 and float16 scales as stored, float tensors at the run dtype
    estimate = checkpoint_weight_bytes(checkpoint_files(quantized_dir), torch.float32)
    float_estimate = checkpoint_weight_bytes(checkpoint_files(reference_dir), torch.float32)
    cfg, state = base
    assert float_estimate == sum(t.numel() * 4 for t in state.values())
    assert estimate < float_estimate


def test_a_model_that_cannot_fit_says_so_with_the_numbers(monkeypatch):
    from types import SimpleNamespace

    from worker.runner import memory

    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", lambda dev: (80 * 2**30, 80 * 2**30))
    monkeypatch.setattr(memory.torch.cuda, "memory_reserved", lambda dev: 0)
    runner = SimpleNamespace(device=torch.device("cuda", 0), config=SimpleNamespace(gpu_memory_utilization=0.9))
    memory.check_weights_fit(runner, 70 * 2**30, "fp8_block")  # 70 GiB of FP8 fits 72 GiB
    with pytest.raises(ModelLoadError, match=r"does not fit: its weights take 140\.0 GiB \(bfloat16\).* 72\.0 GiB"):
        memory.check_weights_fit(runner, 140 * 2**30, "bfloat16")


def test_models_listing_shows_the_quantization():
    from types import SimpleNamespace

    from gateway.app import GatewayServices
    from proto.ward.worker.v1 import worker_pb2 as pb

    info = pb.ModelInfoResponse(max_model_len=4096, quantization="gptq", kv_cache_dtype="fp8")
    state = SimpleNamespace(started_at=0, pool=SimpleNamespace(is_ready=lambda name: True, model_info=lambda name: info))
    card = GatewayServices.model_card(state, "m")
    assert card["quantization"] == "gptq" and card["kv_cache_dtype"] == "fp8"
    info = pb.ModelInfoResponse(max_model_len=4096)  # an older worker reports nothing
    assert "quantization" not in GatewayServices.model_card(state, "m")


# ---- GGUF Q4_0 / Q4_1 / Q8_0 kept quantized (ward model import-gguf) ----------------------------
@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_blocks_convert_to_wards_layout_exactly(kind):
    gguf = pytest.importorskip("gguf")
    from worker.model.quant.gguf import block_layout, to_ward
    from worker.model.quant.packing import dequantize_int

    w = (torch.randn(48, 128, generator=torch.Generator().manual_seed(5)) * 0.1).numpy()
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    raw = gguf.quants.quantize(w, qtype)  # [48, bytes per row]
    want = torch.from_numpy(gguf.quants.dequantize(raw, qtype)).reshape(48, 128)
    for fmt in (None, "offset"):
        t = to_ward(raw, kind, 48, 128, fmt)
        got = dequantize_int(t["qweight"], t["scales"], t.get("zeros"), block_layout(kind)[0], 32, torch.float32,
                             t.get("offsets"))
        assert torch.allclose(got.t(), want, rtol=1e-6, atol=1e-7)


def q4_k_blocks(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random Q4_K rows as ggml lays them out (written here independently of worker/model/quant/gguf.py):
    per 256 weights float16 d and dmin, twelve bytes of 6-bit scales and mins, 128 bytes of nibbles."""
    rng = np.random.default_rng(seed)
    nb = cols // 256
    out = np.zeros((rows, nb, 144), dtype=np.uint8)
    for r in range(rows):
        for b in range(nb):
            blk = out[r, b]
            blk[0:2] = np.frombuffer(np.float16(rng.uniform(0.001, 0.01)).tobytes(), np.uint8)
            blk[2:4] = np.frombuffer(np.float16(rng.uniform(0.001, 0.01)).tobytes(), np.uint8)
            sc, mn = rng.integers(0, 64, 8), rng.integers(0, 64, 8)
            for j in range(4):
                blk[4 + j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6)
                blk[8 + j] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6)
                blk[12 + j] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4)
            blk[16:] = rng.integers(0, 256, 128)
    return out.reshape(rows, nb * 144)


def test_gguf_q4_k_converts_to_wards_layout_exactly():
    """Q4_K (the 4-bit K-quant of Q4_K_M files): Ward's 4-bit, group 32, float32 scales and offsets
    de-quantize to what gguf's own reader computes, to the last bit."""
    gguf = pytest.importorskip("gguf")
    from worker.model.quant.gguf import to_ward
    from worker.model.quant.packing import dequantize_int

    raw = q4_k_blocks(24, 512)
    want = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K)).reshape(24, 512)
    t = to_ward(raw, "Q4_K", 24, 512)
    assert t["scales"].dtype == torch.float32 and t["offsets"].dtype == torch.float32
    got = dequantize_int(t["qweight"], t["scales"], None, 4, 32, torch.float32, t["offsets"])
    assert torch.equal(got.t(), want)


def test_gguf_rope_row_order_matches_transformers():
    from worker.model.quant.gguf import row_order_of_rope_permute

    rows, heads = 24, 3
    w = torch.arange(rows * 2).reshape(rows, 2)
    dim = rows // heads // 2
    expected = w.reshape(heads, dim, 2, 2).swapaxes(2, 1).reshape(rows, 2)  # transformers' reverse permute
    assert torch.equal(w[torch.from_numpy(row_order_of_rope_permute(rows, heads))], expected)


def test_wards_int_layout_with_offsets_loads_like_its_dequantized_model(tmp_path_factory, base):
    """What import-gguf writes for a Q4_1 file: 4-bit, group 32, float offsets."""
    gguf = pytest.importorskip("gguf")
    from worker.model.quant.gguf import to_ward

    cfg, state = base
    quantized, dequantized = {}, {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and module.rpartition(".")[2] in PROJ:
            raw = gguf.quants.quantize(t.numpy(), gguf.GGMLQuantizationType.Q4_1)
            quantized.update({f"{module}.{k}": v for k, v in to_ward(raw, "Q4_1", *t.shape).items()})
            deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1)
            dequantized[name] = torch.from_numpy(deq).reshape(t.shape).float().contiguous()
        else:
            quantized[name] = dequantized[name] = t
    root = tmp_path_factory.mktemp("ward-int")
    qcfg = {"quant_method": "ward-int", "bits": 4, "group_size": 32, "zero_format": "offset"}
    got, llm = _greedy(_write(root / "q", cfg, quantized, qcfg))
    want, ref = _greedy(_write(root / "d", cfg, dequantized, None))
    assert got == want
    assert llm.engine.runner.weight_report["format"] == "ward_int"
    a, b = _prefill_logits(llm, PROMPTS[2]), _prefill_logits(ref, PROMPTS[2])
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_worker_model_info_reports_the_quantization(tmp_path_factory, base):
    import asyncio
    from types import SimpleNamespace

    from proto.ward.worker.v1 import worker_pb2 as pb
    from worker.server.servicer import WorkerServicer

    quantized_dir, _ = write_pair(tmp_path_factory, base, "gptq-g128")
    _, llm = _greedy(quantized_dir, kv_cache_dtype="fp8")
    servicer = WorkerServicer("m", engine=SimpleNamespace(engine=llm.engine))
    try:
        info = asyncio.run(servicer.ModelInfo(pb.ModelInfoRequest(), None))
    finally:
        servicer.close()
    assert info.quantization == "gptq" and info.kv_cache_dtype == "fp8"


def _w8a8_on_the_torch_path(layer, x: torch.Tensor) -> torch.Tensor:
    """What an FP8 layer computes on CUDA at more than 8 rows, in float32 torch: the activation
    quantized per token (per token and 128-column block for block scales), then the product with the
    de-quantized weight."""
    from worker.model.quant.linear import quantize_fp8_per_token, quantize_fp8_per_token_block

    x2 = x.reshape(-1, x.shape[-1]).float()
    if layer.qc.method == "fp8_block":
        bk = layer.qc.block_size[1]
        xq, xs = quantize_fp8_per_token_block(x2, bk)
        xd = xq.float() * xs.repeat_interleave(bk, 1)[:, : x2.shape[1]]
    else:
        xq, xs = quantize_fp8_per_token(x2, layer.input_scale)
        xd = xq.float() * xs
    y = (xd @ layer.dequantized_weight(torch.float32).t()).to(x.dtype)
    return layer._add_bias(y.reshape(*x.shape[:-1], -1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_quantized_checkpoint_on_cuda_is_close_to_the_dequantized_model(tmp_path_factory, base, fmt, monkeypatch):
    """The GPU paths (torch._scaled_mm after the one-kernel activation quantization, the block FP8
    and INT4 Triton kernels, FP8 KV cache) on the whole model in bfloat16, over a 12-token prompt
    (more rows than the decode GEMV takes), against the de-quantized model in float32 on the CPU.
    INT4 is weight-only: its logits are close to the oracle's. FP8 also quantizes the activations,
    and their rounding alone moves this random model's logits by 7-11% of their largest value (the
    bf16 hidden states land on other e4m3 steps than float32 ones, so no float32 emulation follows the
    GPU element by element): its distance from the oracle is held to what the same W8A8 arithmetic
    in float32 on the CPU shows, which a wrong scale or layout exceeds many times over. The FP8 KV
    cache is compared with the bf16-cache run of the same checkpoint."""
    from worker.model.quant.linear import Fp8Linear

    fp8 = fmt.startswith(("fp8", "ct-fp8"))
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need Ada or Hopper")
    quantized_dir, reference_dir = write_pair(tmp_path_factory, base, fmt)
    prompt = PROMPTS[2] + PROMPTS[0]
    logits = {}
    for name, d, kw in (("quantized", quantized_dir, {}), ("kv-fp8", quantized_dir, {"kv_cache_dtype": "fp8"})):
        llm = LLM(model=d, device="cuda", dtype="bfloat16", block_size=16, num_kv_blocks=64, max_model_len=64,
                  enforce_eager=True, **kw)
        logits[name] = _prefill_logits(llm, prompt).float().cpu()
        del llm

    def cpu_logits(model_dir) -> torch.Tensor:
        oracle = LLM(model=model_dir, device="cpu", dtype="float32", block_size=16, num_kv_blocks=64,
                     max_model_len=64, enforce_eager=True)
        return _prefill_logits(oracle, prompt).float()

    ref = cpu_logits(reference_dir)
    gap = logits["quantized"] - ref
    if fp8:
        monkeypatch.setattr(Fp8Linear, "forward", _w8a8_on_the_torch_path)
        w8a8_gap = cpu_logits(quantized_dir) - ref
        assert float(w8a8_gap.norm() / ref.norm()) > 0.005  # the emulation did quantize the activations
        assert float(gap.norm()) <= 1.5 * float(w8a8_gap.norm()) + 0.01 * float(ref.norm())
        assert gap.abs().max() <= 0.2 * ref.abs().max()
    else:
        assert gap.abs().max() <= 0.05 * ref.abs().max()
    # the FP8 cache's own rounding; beside FP8 activations it also moves their e4m3 steps, as above
    # (0.103-0.109 on an H100 for the three FP8 formats), so those get the W8A8 noise on top
    kv_gap = logits["kv-fp8"] - logits["quantized"]
    assert float(kv_gap.norm() / logits["quantized"].norm()) < (0.15 if fp8 else 0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("w8a8", ["0", "normed", "all"])
@pytest.mark.parametrize("fmt", ["ct-fp8-channel", "ct-fp8-tensor", "fp8-at-load"])
def test_fp8_decode_rows_through_the_gemv_follow_the_dequantized_model_on_cuda(tmp_path_factory, base, fmt, w8a8,
                                                                              monkeypatch):
    """Decode steps (one row each; the 7-token prefill too) of an FP8 model read the e4m3 weights
    through the decode GEMV (``Fp8DecodeGemvLinear``), the activations left in bf16 (or, with
    ``WARD_FP8_GEMV_W8A8``, quantized per row for some projections: W8A8); teacher-forced on the same
    tokens, their logits stay close to the de-quantized model's: within 5% of the largest logit with
    bf16 activations, within W8A8's own rounding with e4m3 ones (7-11% of the largest logit on this
    model for the W8A8 path above 8 rows, above; 8.0-8.7% with every projection W8A8 on an H100,
    2026-12-07)."""
    from tests.paged_driver import PagedDriver
    from worker.model.decode_linear import Fp8DecodeGemvLinear

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need Ada or Hopper")
    monkeypatch.setenv("WARD_FP8_GEMV_W8A8", w8a8)
    quantized_dir, reference_dir = write_pair(tmp_path_factory, base, "ct-fp8-channel" if fmt == "fp8-at-load" else fmt)
    runs = {}
    for name, d, kw in (("quantized", reference_dir if fmt == "fp8-at-load" else quantized_dir,
                         {"quantization": "fp8"} if fmt == "fp8-at-load" else {}),
                        ("reference", reference_dir, {})):
        llm = LLM(model=d, device="cuda", dtype="bfloat16", block_size=16, num_kv_blocks=64, max_model_len=64,
                  enforce_eager=True, **kw)
        runner = llm.engine.runner
        swapped = sum(isinstance(m, Fp8DecodeGemvLinear) for m in runner.model.modules())
        drv = PagedDriver(runner.model, runner.spec, num_blocks=32, block_size=16, dtype=runner.dtype,
                          device=runner.device)
        prompt = PROMPTS[2]
        steps = [drv.step([("s", prompt, 0)])[0][-1]]
        for i, token in enumerate([7, 300, 41, 9, 128]):  # the same tokens for both models
            steps.append(drv.step([("s", [token], len(prompt) + i)])[0][-1])
        runs[name] = (swapped, torch.stack(steps).float())
        del llm, drv
    assert runs["quantized"][0] == 8  # qkv, o, gate_up, down of both layers
    ref, got = runs["reference"][1], runs["quantized"][1]
    assert (got - ref).abs().max() <= (0.05 if w8a8 == "0" else 0.12) * ref.abs().max()
