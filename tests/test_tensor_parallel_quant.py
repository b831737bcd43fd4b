"""Quantized checkpoints under tensor parallelism, on the CPU (gloo): each rank reads its slices of
the quantized tensors (packed words, groups and scale blocks along the split axis) and TP=2 gives
TP=1's greedy tokens and top logprobs on the same checkpoint, for FP8 block / per channel / per
tensor, AWQ, GPTQ 4- and 8-bit, Ward's own INT layout, FP8 at load (the ranks' per-channel scales
joined so they equal one GPU's), an FP8 KV cache with per-head scales, and FP8 MoE experts.

Shapes that cannot split (a group or an FP8 block across ranks) and GPTQ act-order are refused
before any rank starts, naming the field. The checkpoint writers are the independent ones of
``tests/test_quantization.py`` and ``tests/test_quantized_moe.py``.
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, Qwen3MoeConfig

from tests.test_quantization import FORMATS, PROJ, _write, awq, compressed_tensors, fp8_block, gptq, random_state
from tests.test_quantized_moe import BLOCK_FP8, _per_expert, _write_pair, mixtral_compressed_tensors
from tests.test_tensor_parallel import ENGINE, GREEDY, PROMPTS, one_torch_thread  # noqa: F401 (autouse)
from worker.errors import ModelLoadError
from worker.llm import LLM
from worker.model.quant.packing import unpack_cols

# The TP=1 reference and TP=2 differ only in the order of sums (the weights are the same numbers)
ATOL = 1e-4


@pytest.fixture(scope="module")
def tp_base():
    return make_tp_base()


def make_tp_base() -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """A tiny Llama whose per-rank sizes at TP=2 fall on 128-row FP8 blocks and 128-row groups:
    2 heads of 128 (q, k, v: 128 rows a rank), intermediate 512 (256 a rank)."""
    cfg = LlamaConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=128, vocab_size=512, max_position_embeddings=512,
                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    return cfg, random_state(cfg)


def run(model_dir: str, tp: int, **options) -> tuple[list[list[int]], torch.Tensor, LLM]:
    """Greedy tokens and every step's top-3 logprobs; the engine is closed, and returned for a look."""
    llm = LLM(model_dir, tensor_parallel_size=tp, **{**ENGINE, **options})
    try:
        outs = [o.outputs[0] for o in llm.generate(PROMPTS, GREEDY)]
    finally:
        llm.engine.close()
    top = torch.tensor([[t.logprob for t in step.top] for out in outs for step in out.logprobs])
    return [list(out.token_ids) for out in outs], top, llm


def assert_tp2_equals_tp1(model_dir: str, **options) -> LLM:
    tokens, top, _ = run(model_dir, 1, **options)
    assert all(len(t) == GREEDY.max_tokens for t in tokens)
    split_tokens, split_top, split = run(model_dir, 2, **options)
    assert split_tokens == tokens
    torch.testing.assert_close(split_top, top, rtol=0, atol=ATOL)  # the numbers, not only the argmax
    return split


def write_quantized(root, base, qcfg: dict | str, writer) -> str:
    """The checkpoint of ``base`` with every decoder projection written by ``writer`` (FORMATS')."""
    cfg, state = base
    tensors = {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and module.rpartition(".")[2] in PROJ:
            tensors.update({f"{module}.{k}": v.contiguous() for k, v in writer(t)[0].items()})
        else:
            tensors[name] = t
    return _write(root, cfg, tensors, compressed_tensors(qcfg) if isinstance(qcfg, str) else qcfg)


@pytest.mark.parametrize("fmt", [
    "fp8-block", "ct-fp8-channel", "awq-g32", "gptq-g128",
    pytest.param("ct-fp8-tensor", marks=pytest.mark.slow),
    pytest.param("awq-g128", marks=pytest.mark.slow),
    pytest.param("gptq-8bit-g128-v2", marks=pytest.mark.slow),
])
def test_a_quantized_checkpoint_at_tp2_gives_tp1_tokens(tmp_path, tp_base, fmt):
    split = assert_tp2_equals_tp1(write_quantized(tmp_path, tp_base, *FORMATS[fmt]))
    assert split.engine.runner.weight_report["quantized_layers"] == 2 * 4  # rank 0's qkv, o, gate_up, down


def test_awq_with_one_group_replicates_its_scales_on_the_row_parallel_ranks(tmp_path, tp_base):
    """group_size -1: one scale row serves every input row, so a row-parallel rank keeps all of it."""
    qcfg = {"quant_method": "awq", "bits": 4, "group_size": -1, "zero_point": True, "version": "gemm"}
    assert_tp2_equals_tp1(write_quantized(tmp_path, tp_base, qcfg, lambda w: awq(w, w.shape[1])))


def test_wards_int_layout_at_tp2_gives_tp1_tokens(tmp_path, tp_base):
    """What import-gguf writes (8-bit codes with uint8 zeros, group 32): GPTQ's rows in order, zeros unpacked."""
    cfg, state = tp_base
    tensors = {}
    for name, t in state.items():
        module, _, kind = name.rpartition(".")
        if kind == "weight" and module.rpartition(".")[2] in PROJ:
            q, _ = gptq(t, 32, False, bits=8, v2=True)
            tensors[f"{module}.qweight"] = q["qweight"]
            tensors[f"{module}.scales"] = q["scales"]
            tensors[f"{module}.zeros"] = unpack_cols(q["qzeros"], 8).to(torch.uint8).contiguous()
        else:
            tensors[name] = t
    model_dir = _write(tmp_path / "ward-int", cfg, tensors, {"quant_method": "ward-int", "bits": 8, "group_size": 32})
    assert_tp2_equals_tp1(model_dir)


def test_fp8_at_load_at_tp2_gives_tp1_tokens(tmp_path, tp_base):
    """A float checkpoint quantized while loading: a row-parallel rank's per-channel scales are the
    maximum over the ranks, so each rank's codes are those one GPU would hold."""
    cfg, state = tp_base
    model_dir = _write(tmp_path / "float", cfg, state, None)
    assert_tp2_equals_tp1(model_dir, quantization="fp8")


def test_an_fp8_kv_cache_at_tp2_holds_each_ranks_heads_with_their_scales(tmp_path, tp_base):
    cfg, state = tp_base
    state = dict(state)
    for i in range(cfg.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor([0.01, 0.02])  # one per KV head
        state[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor(0.005)  # per tensor
    model_dir = _write(tmp_path / "kv", cfg, state, None)
    split = assert_tp2_equals_tp1(model_dir, kv_cache_dtype="fp8")
    attn = split.engine.runner.model.layers[0].self_attn.attn  # rank 0 holds KV head 0 alone
    assert torch.equal(attn.k_scale.cpu(), torch.tensor([0.01])) and torch.equal(attn.v_scale.cpu(), torch.tensor([0.005]))
    assert split.engine.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn


def _qwen3_moe_fp8(tmp_path) -> tuple[str, str]:
    """A tiny Qwen3-MoE in the FP8 block layout whose experts split on 128-row blocks at TP=2."""
    cfg = Qwen3MoeConfig(hidden_size=128, intermediate_size=256, moe_intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=128, vocab_size=512, num_experts=4,
                         num_experts_per_tok=2, mlp_only_layers=[1], max_position_embeddings=512,
                         architectures=["Qwen3MoeForCausalLM"])
    state = random_state(cfg)
    state.update(_per_expert(state, "mlp", ("gate_proj", "up_proj", "down_proj")))
    return _write_pair(tmp_path, cfg, state, BLOCK_FP8, fp8_block)


def test_fp8_block_moe_experts_at_tp2_give_tp1_tokens(tmp_path):
    quantized_dir, _ = _qwen3_moe_fp8(tmp_path)
    assert_tp2_equals_tp1(quantized_dir)


@pytest.mark.slow
def test_fp8_at_load_of_a_float_moe_at_tp2_gives_tp1_tokens(tmp_path):
    _, float_dir = _qwen3_moe_fp8(tmp_path)
    assert_tp2_equals_tp1(float_dir, quantization="fp8")


@pytest.mark.slow
def test_compressed_tensors_fp8_mixtral_at_tp2_gives_tp1_tokens(tmp_path):
    quantized_dir, _ = mixtral_compressed_tensors(tmp_path, "channel")
    assert_tp2_equals_tp1(quantized_dir, max_model_len=128)  # the model's context


# ---- refused before any rank starts ------------------------------------------------------------
def _config_only(tmp_path, qcfg: dict, **shape) -> str:
    """config.json alone: the split is refused before any weight is read or any rank starts."""
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=64, vocab_size=512, **shape).to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["quantization_config"] = qcfg
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


@pytest.mark.parametrize("fmt, message", [
    ("awq-g128", r"each rank's 64 input rows of o_proj are not a multiple of quantization_config.group_size 128"),
    ("fp8-block", r"each rank's 64 output rows of q_proj are not a multiple of "
                  r"quantization_config.weight_block_size \[128, 128\]"),
    ("gptq-g64-act-order", r"quantization_config.desc_act = true .* not supported with tensor_parallel_size 2"),
])
def test_a_quantized_checkpoint_that_cannot_split_is_refused_naming_the_field(tmp_path, fmt, message):
    model_dir = _config_only(tmp_path / fmt, FORMATS[fmt][0])
    with pytest.raises(ModelLoadError, match=message):
        LLM(model_dir, tensor_parallel_size=2, **ENGINE)
    with pytest.raises(ModelLoadError, match=r"checkpoint lacks|no \*\.safetensors"):  # TP=1 accepts the shape
        LLM(model_dir, tensor_parallel_size=1, **ENGINE)


def test_a_fused_fp8_block_row_that_the_ranks_would_cut_is_refused_while_reading():
    """The reader checks each slice again (a checkpoint whose scales disagree with its config)."""
    from worker.model.quant.config import parse_quant_config
    from worker.parallel.quant_split import take_in, take_out

    qc = parse_quant_config(FORMATS["fp8-block"][0])
    scales = torch.arange(8.0).reshape(4, 2)  # [ceil(512 / 128), ceil(256 / 128)]
    assert torch.equal(take_out(scales, "w.weight_scale_inv", qc, "weight_scale_inv", [(256, 256)]), scales[2:])
    assert torch.equal(take_in(scales, "w.weight_scale_inv", qc, "weight_scale_inv", 128, 128), scales[:, 1:])
    with pytest.raises(ModelLoadError, match=r"w.weight_scale_inv: rows 64..128 .* units of 128"):
        take_out(scales, "w.weight_scale_inv", qc, "weight_scale_inv", [(64, 64)])
