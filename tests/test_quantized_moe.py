"""FP8 mixture-of-experts checkpoints as model hubs ship them: a tiny Qwen3-MoE in the Qwen3-*-FP8
layout (128x128 block scales on every projection and expert, a dense layer between sparse ones, the
router in float) and a tiny Mixtral in compressed-tensors FP8 (per-channel and per-tensor scales,
hub names ``block_sparse_moe.experts.E.w1``), each beside the same model de-quantized to float32:
Ward loads the FP8 one and gives the de-quantized one's greedy tokens and prefill logits.
``quantization="fp8"`` quantizes a float MoE's experts at load. 4-bit MoE checkpoints are refused
naming the field. The writers are the independent ones of ``tests/test_quantization.py``."""
from __future__ import annotations

import pytest
import torch
from transformers import MixtralConfig, Qwen3MoeConfig

from tests.test_quantization import (
    PROMPTS,
    _greedy,
    _prefill_logits,
    _write,
    compressed_tensors,
    fp8_block,
    fp8_scaled,
    one_torch_thread,  # noqa: F401  (autouse)
    random_state,
)
from worker.errors import ModelLoadError
from worker.llm import LLM
from worker.model.quant.moe import Fp8SparseMoe
from worker.sampling_params import SamplingParams

BLOCK_FP8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _per_expert(state: dict, layer_prefix: str, names: tuple[str, str, str]) -> dict[str, torch.Tensor]:
    """transformers' stacked experts as the hub's per-expert tensors (gate, up, down under ``names``)."""
    out = {}
    for key in [k for k in state if k.endswith("mlp.experts.gate_up_proj")]:
        layer = key.removesuffix(".mlp.experts.gate_up_proj")
        gate_up, down = state.pop(key), state.pop(f"{layer}.mlp.experts.down_proj")
        inter = down.shape[2]
        for e in range(gate_up.shape[0]):
            base = f"{layer}.{layer_prefix}.experts.{e}"
            out[f"{base}.{names[0]}.weight"] = gate_up[e, :inter].contiguous()
            out[f"{base}.{names[1]}.weight"] = gate_up[e, inter:].contiguous()
            out[f"{base}.{names[2]}.weight"] = down[e].contiguous()
    return out


def _write_pair(tmp_path, cfg, state: dict, qcfg: dict, writer) -> tuple[str, str]:
    quantized, dequantized = {}, {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        leaf = module.rpartition(".")[2]
        if kind == "weight" and (leaf in ATTENTION or leaf in ("w1", "w2", "w3")):
            tensors, deq = writer(t)
            quantized.update({f"{module}.{k}": v.contiguous() for k, v in tensors.items()})
            dequantized[name] = deq.float().contiguous()
        else:
            quantized[name] = dequantized[name] = t
    return (_write(tmp_path / "quantized", cfg, quantized, qcfg, cfg.architectures),
            _write(tmp_path / "dequantized", cfg, dequantized, None, cfg.architectures))


def qwen3_moe_block_fp8(tmp_path) -> tuple[str, str]:
    cfg = Qwen3MoeConfig(hidden_size=128, intermediate_size=128, moe_intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, vocab_size=512, num_experts=4,
                         num_experts_per_tok=2, mlp_only_layers=[1], max_position_embeddings=128,
                         architectures=["Qwen3MoeForCausalLM"])
    state = random_state(cfg)
    state.update(_per_expert(state, "mlp", ("gate_proj", "up_proj", "down_proj")))
    return _write_pair(tmp_path, cfg, state, BLOCK_FP8, fp8_block)


def mixtral_compressed_tensors(tmp_path, strategy: str) -> tuple[str, str]:
    cfg = MixtralConfig(hidden_size=128, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=2, vocab_size=512, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=128, tie_word_embeddings=False, architectures=["MixtralForCausalLM"])
    state = random_state(cfg)
    state.update(_per_expert(state, "block_sparse_moe", ("w1", "w3", "w2")))
    for key in [k for k in state if k.endswith("mlp.gate.weight")]:  # the hub's router name
        state[key.replace("mlp.gate", "block_sparse_moe.gate")] = state.pop(key)
    qcfg = compressed_tensors(strategy)
    qcfg["ignore"] = ["lm_head", "re:.*block_sparse_moe.gate$"]
    return _write_pair(tmp_path, cfg, state, qcfg, lambda w: fp8_scaled(w, strategy == "channel"))


CASES = {
    "qwen3-moe-fp8-block": qwen3_moe_block_fp8,
    "mixtral-ct-fp8-channel": lambda p: mixtral_compressed_tensors(p, "channel"),
    "mixtral-ct-fp8-tensor": lambda p: mixtral_compressed_tensors(p, "tensor"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp8_moe_checkpoint_gives_the_dequantized_models_tokens(tmp_path, case):
    quantized_dir, reference_dir = CASES[case](tmp_path)
    got, llm = _greedy(quantized_dir)
    want, ref = _greedy(reference_dir)
    assert got == want
    a, b = _prefill_logits(llm, PROMPTS[2]), _prefill_logits(ref, PROMPTS[2])
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    experts = [m for m in llm.engine.runner.model.modules() if isinstance(m, Fp8SparseMoe)]
    assert experts and all(m.w13.dtype == torch.float8_e4m3fn for m in experts)
    report = llm.engine.runner.weight_report
    assert report["weight_bytes"] < 0.6 * ref.engine.runner.weight_report["weight_bytes"]


def test_fp8_at_load_quantizes_a_float_moe(tmp_path):
    """``quantization="fp8"`` on a float MoE checkpoint: experts and projections per-channel e4m3, the
    same as that checkpoint rounded through per-channel e4m3 by hand."""
    _, float_dir = qwen3_moe_block_fp8(tmp_path / "float")
    from safetensors.torch import load_file

    from transformers import AutoConfig

    state = load_file(f"{float_dir}/model.safetensors")
    rounded = {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        quantize = kind == "weight" and module.rpartition(".")[2] in ATTENTION
        rounded[name] = fp8_scaled(t, True)[1].contiguous() if quantize else t
    cfg = AutoConfig.from_pretrained(float_dir)
    rounded_dir = _write(tmp_path / "rounded", cfg, rounded, None, ["Qwen3MoeForCausalLM"])
    got, llm = _greedy(float_dir, quantization="fp8")
    want, ref = _greedy(rounded_dir)
    assert got == want
    a, b = _prefill_logits(llm, PROMPTS[2]), _prefill_logits(ref, PROMPTS[2])
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    assert any(isinstance(m, Fp8SparseMoe) for m in llm.engine.runner.model.modules())


def test_a_4bit_moe_checkpoint_is_refused_naming_the_field(tmp_path):
    _, float_dir = qwen3_moe_block_fp8(tmp_path)
    import json

    config = json.loads((tmp_path / "dequantized" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                     "version": "gemm"}
    (tmp_path / "dequantized" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="quant_method 'awq'.*mixture-of-experts"):
        LLM(model=float_dir, device="cpu", dtype="float32", num_kv_blocks=8)


def test_fp8_block_experts_whose_rows_split_a_block_are_refused(tmp_path):
    cfg = Qwen3MoeConfig(hidden_size=128, intermediate_size=128, moe_intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, vocab_size=512, num_experts=2,
                         num_experts_per_tok=1, max_position_embeddings=128, architectures=["Qwen3MoeForCausalLM"])
    state = random_state(cfg)
    state.update(_per_expert(state, "mlp", ("gate_proj", "up_proj", "down_proj")))
    quantized_dir, _ = _write_pair(tmp_path, cfg, state, BLOCK_FP8, fp8_block)
    with pytest.raises(ModelLoadError, match="weight_block_size"):
        LLM(model=quantized_dir, device="cpu", dtype="float32", num_kv_blocks=8)


def test_dummy_fp8_experts_fill_the_checkpoints_layout(tmp_path):
    """``load_format="dummy"`` (benchmarks): random e4m3 codes with positive scales, and the model runs."""
    quantized_dir, _ = qwen3_moe_block_fp8(tmp_path)
    llm = LLM(model=quantized_dir, device="cpu", dtype="float32", load_format="dummy", num_kv_blocks=16,
              max_model_len=64)
    experts = [m for m in llm.engine.runner.model.modules() if isinstance(m, Fp8SparseMoe)]
    assert len(experts) == 2 and all(bool((m.w13_scale > 0).all()) and m.w13.float().abs().sum() > 0 for m in experts)
    out = llm.generate([{"prompt_token_ids": [3, 4, 5]}])[0].outputs[0].token_ids
    assert len(out) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: CUDA is not available")
@pytest.mark.parametrize("case", sorted(CASES))
def test_fp8_moe_on_the_gpu_gives_the_dequantized_models_tokens(tmp_path, case):
    """On CUDA the experts go through the fused Triton kernel, de-quantizing tiles as it reads them."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("Triton reads e4m3 from Ada on")
    quantized_dir, reference_dir = CASES[case](tmp_path)
    kw = dict(device="cuda", dtype="float32", block_size=16, num_kv_blocks=64, max_model_len=64)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in LLM(model=quantized_dir, **kw).generate(
        [{"prompt_token_ids": p} for p in PROMPTS], params)]
    want = [o.outputs[0].token_ids for o in LLM(model=reference_dir, **kw).generate(
        [{"prompt_token_ids": p} for p in PROMPTS], params)]
    assert got == want
