"""A one-layer random Llama (GQA: four query heads over two KV heads) saved as a model directory: for
engine runs in Triton's interpreter, where every layer costs seconds, and for measuring the engine's
host work (bench/host_step.py), where the model's own arithmetic should be small."""
from __future__ import annotations

import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_dir(prefix: str) -> str:
    """A fresh directory holding the model, its weights drawn from seed 0."""
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    model_dir = tempfile.mkdtemp(prefix=prefix)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    return model_dir
