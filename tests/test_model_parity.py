"""Our model vs Hugging Face transformers on the same random weights, for every supported family:
prefill logits, chunked prefill and paged decode logits (float32, relative error < 1e-4)."""
from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from tests.paged_driver import PagedDriver, rel_err
from worker.attention.torch_backend import TorchBackend
from worker.model.loader import build_model, load_weights
from worker.model.spec import load_spec

COMMON = dict(hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4, vocab_size=211,
              max_position_embeddings=128, rms_norm_eps=1e-6)

FAMILIES = {
    "llama-gqa-llama3-rope": lambda: LlamaConfig(
        **COMMON, num_key_value_heads=2, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}, rope_theta=10000.0),
    "llama-tied-mha": lambda: LlamaConfig(**COMMON, num_key_value_heads=4, tie_word_embeddings=True),
    "llama-linear-rope": lambda: LlamaConfig(**COMMON, num_key_value_heads=1,
                                             rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "mistral-sliding-window": lambda: MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=7),
    "qwen2-bias": lambda: Qwen2Config(**COMMON, num_key_value_heads=2, tie_word_embeddings=False),
    "qwen3-qk-norm": lambda: Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=24, tie_word_embeddings=True),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    cfg = FAMILIES[request.param]()
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in hf.parameters():  # every weight random, norms and biases included
            p.normal_(0.0, 0.08)
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    spec = load_spec(str(d))
    ours = build_model(spec, TorchBackend(), torch.device("cpu"), torch.float32, 128)
    load_weights(ours, spec, str(d))
    return request.param, hf, ours, spec


def hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


def test_prefill_logits_match_transformers(pair):
    name, hf, ours, spec = pair
    rng = random.Random(1)
    seqs = {f"s{i}": [rng.randrange(spec.vocab_size) for _ in range(n)] for i, n in enumerate([5, 17, 33])}
    drv = PagedDriver(ours, spec, num_blocks=40, block_size=4)
    outs = drv.step([(sid, toks, 0) for sid, toks in seqs.items()])  # three prefills in one flat batch
    for (sid, toks), got in zip(seqs.items(), outs):
        err = rel_err(got, hf_logits(hf, toks))
        assert err < 1e-4, f"{name} {sid}: relative error {err:.2e}"


def test_chunked_prefill_and_paged_decode_logits_match_transformers(pair):
    name, hf, ours, spec = pair
    rng = random.Random(2)
    a = [rng.randrange(spec.vocab_size) for _ in range(30)]
    b = [rng.randrange(spec.vocab_size) for _ in range(21)]
    ref_a, ref_b = hf_logits(hf, a), hf_logits(hf, b)
    drv = PagedDriver(ours, spec, num_blocks=40, block_size=4, seed=3)
    # step 1: a's first chunk with b's whole prompt but one token
    la1, lb1 = drv.step([("a", a[:11], 0), ("b", b[:20], 0)])
    # step 2: a's second chunk (context 11) beside b's decode
    la2, lb2 = drv.step([("a", a[11:25], 11), ("b", b[20:21], 20)])
    got_a = [la1, la2]
    # steps 3..: a decodes one token at a time over the paged cache
    for p in range(25, 30):
        got_a.append(drv.step([("a", a[p : p + 1], p)])[0])
    assert rel_err(torch.cat(got_a), ref_a) < 1e-4, name
    assert rel_err(torch.cat([lb1, lb2]), ref_b) < 1e-4, name
    # every decode step on its own, too
    for i, p in enumerate(range(25, 30)):
        assert rel_err(got_a[2 + i], ref_a[p : p + 1]) < 1e-4, f"{name} decode at {p}"
