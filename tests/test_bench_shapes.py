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
