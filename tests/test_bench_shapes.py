"""Benchmark model shapes (ward/benchmarks/models.py): each config loads as the family it names, the
Gemma 3 27B shape takes per-group KV tables, batch-1 read sizes match the published parameter
counts, and prompt ids stay within each vocabulary."""
from __future__ import annotations

import pytest

from ward.benchmarks.models import SHAPES, param_counts, prompt_id_limit, write_config_dir
from worker.engine.kv_layout import plan_kv_layout
from worker.model.spec import load_spec

FAMILY = {"llama-3.1-8b": "llama", "llama-3.1-70b": "llama", "tiny-llama": "llama", "gemma-3-27b": "gemma3",
          "mixtral-8x7b": "mixtral", "qwen3-30b-a3b": "qwen3_moe"}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_loads_as_its_family(shape, tmp_path):
    spec = load_spec(write_config_dir(shape, str(tmp_path)))
    assert spec.family == FAMILY[shape.removesuffix("-awq").removesuffix("-fp8")]
    assert prompt_id_limit(spec.vocab_size) <= spec.vocab_size


def test_gemma3_27b_shape_keeps_a_table_per_layer_group(tmp_path):
    spec = load_spec(write_config_dir("gemma-3-27b", str(tmp_path)))
    assert spec.num_layers == 62 and spec.head_dim == 128 and spec.attn_scale == 168**-0.5
    layout = plan_kv_layout(spec.sliding_windows, 4096)
    assert layout.windows == (None,) + (1024,) * 6 and layout.layers_per_block == 10


@pytest.mark.parametrize("shape, billions", [("llama-3.1-8b", 7.50), ("gemma-3-27b", 27.01), ("mixtral-8x7b", 12.75),
                                             ("qwen3-30b-a3b", 3.04)])
def test_batch1_reads_match_published_sizes(shape, billions):
    # Llama 3.1 8B: 8.03B less its 0.53B input embedding; Gemma 3 27B text: the whole model, its tied
    # embedding read for the logits; Mixtral 8x7B: 12.9B active less its 0.13B input embedding;
    # Qwen3-30B-A3B: 3.3B active less its 0.31B input embedding
    assert param_counts(SHAPES[shape])[0] / 1e9 == pytest.approx(billions, abs=0.01)


def tiny_variant(cfg: dict) -> dict:
    """The shape's architecture and quantization at a size a CPU runs in a second: what the GPU
    benchmark builds from dummy weights, exercised end to end before a GPU sees it."""
    small = dict(cfg, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, vocab_size=512, max_position_embeddings=256, torch_dtype="float32")
    if "num_local_experts" in cfg:
        small.update(num_local_experts=4, num_experts_per_tok=2)
    if "num_experts" in cfg:
        small.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128)
    small["num_hidden_layers"] = 6 if cfg.get("sliding_window_pattern") else 2  # Gemma 3: five local, one global
    if cfg.get("sliding_window"):
        small["sliding_window"] = 16
    if cfg.get("query_pre_attn_scalar"):
        small["query_pre_attn_scalar"] = 32
    return small


@pytest.mark.parametrize("shape", sorted(s for s in SHAPES if s != "tiny-llama"))
def test_every_shape_runs_with_dummy_weights_at_a_small_size(shape, tmp_path):
    import json

    from worker.llm import LLM
    from worker.sampling_params import SamplingParams

    (tmp_path / "config.json").write_text(json.dumps(tiny_variant(SHAPES[shape])))
    llm = LLM(model=str(tmp_path), load_format="dummy", device="cpu", dtype="float32", max_model_len=96,
              num_kv_blocks=160, block_size=4)
    prompts = [{"prompt_token_ids": [(7 * i + j) % 500 + 3 for j in range(40)]} for i in range(2)]
    outs = llm.generate(prompts, SamplingParams(max_tokens=24, ignore_eos=True, temperature=0))
    assert all(len(o.outputs[0].token_ids) == 24 for o in outs)
    if shape == "gemma-3-27b":
        assert llm.engine.runner.kv_layout.num_groups == 6  # one global group of one layer, five sliding
    if shape.endswith(("-awq", "-fp8")):
        assert llm.engine.runner.weight_report["quantized_layers"] > 0
