"""Model directories for benchmarks: real architectures with random weights (load_format dummy)."""
from __future__ import annotations

import json
import os

LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu",
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 128000, "eos_token_id": 128001,
}

# A few-MB model of the same layout: lets the benchmark code itself be exercised on a CPU.
TINY_LLAMA = dict(LLAMA_3_1_8B, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128256)

# The tensor-parallel anchor's shape (TP=2): 80 layers, 64 heads, 8 KV heads.
LLAMA_3_1_70B = dict(LLAMA_3_1_8B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                     num_attention_heads=64, num_key_value_heads=8)

# The model-family anchors (bf16 fits one H200): Gemma 3 27B's text model (MedGemma 27B has the same
# shape), 5 sliding-window layers (1,024) to 1 global; Mixtral 8x7B, 8 experts, top-2.
GEMMA_3_27B = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 5376,
    "intermediate_size": 21504, "num_hidden_layers": 62, "num_attention_heads": 32, "num_key_value_heads": 16,
    "head_dim": 128, "vocab_size": 262208, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 168, "sliding_window": 1024, "sliding_window_pattern": 6, "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": None, "attn_logit_softcapping": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "bos_token_id": 2, "eos_token_id": [1, 106],
}
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
    "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0, "hidden_act": "silu", "sliding_window": None, "router_aux_loss_coef": 0.02,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}

# Qwen3-30B-A3B (128 experts, top 8, 768 rows each) in bf16 and in its FP8 release's layout
# (128x128 block scales on every projection and expert; the router in bf16).
QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
    "moe_intermediate_size": 768, "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
    "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "hidden_act": "silu", "use_sliding_window": False, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645,
}
FP8_BLOCK = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}

# 4-bit AWQ (GEMM packing, group 128) as AutoAWQ writes it: the INT4 shapes get random codes in the
# checkpoint's layout (the 70B one fits one H200: about 37 GB of weights).
AWQ_INT4 = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}

SHAPES = {"llama-3.1-8b": LLAMA_3_1_8B, "llama-3.1-70b": LLAMA_3_1_70B, "tiny-llama": TINY_LLAMA}
SHAPES.update({f"{name}-awq": dict(cfg, quantization_config=AWQ_INT4) for name, cfg in list(SHAPES.items())})
SHAPES.update({"gemma-3-27b": GEMMA_3_27B, "mixtral-8x7b": MIXTRAL_8X7B, "qwen3-30b-a3b": QWEN3_30B_A3B,
               "qwen3-30b-a3b-fp8": dict(QWEN3_30B_A3B, quantization_config=FP8_BLOCK)})


def prompt_id_limit(vocab_size: int) -> int:
    """Prompt token ids are drawn from [1000, this): 120,000 as the peer's script, or the vocabulary's end."""
    return min(120000, vocab_size)


def write_config_dir(shape: str, directory: str) -> str:
    """A model directory holding only config.json (weights come from the dummy loader)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r} (known: {', '.join(SHAPES)})")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(SHAPES[shape], f)
    return directory


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "generation_config.json")


def copy_tokenizer(source_dir: str, directory: str) -> None:
    """The tokenizer files of ``source_dir`` into a shape's directory. Its config keeps the shape's
    vocabulary size (ids past the tokenizer's are never allowed by a grammar) and takes the source's
    BOS/EOS ids, which the tokenizer knows."""
    import shutil

    copied = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(source_dir, n))]
    if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
        raise ValueError(f"{source_dir}: no tokenizer.json or tokenizer.model")
    for name in copied:
        if name != "generation_config.json":
            shutil.copy(os.path.join(source_dir, name), os.path.join(directory, name))
    with open(os.path.join(source_dir, "config.json")) as f:
        source = json.load(f)
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update({k: source[k] for k in ("bos_token_id", "eos_token_id") if k in source})
    with open(path, "w") as f:
        json.dump(cfg, f)


def param_counts(cfg: dict) -> tuple[int, int]:
    """(parameters read per batch-1 decode step, embedding-table parameters) of a config: attention,
    the MLP (a MoE reads its top-k experts and its router), norms and the output projection (read
    for the logits even when tied to the embeddings)."""
    h, i, L, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    experts = cfg.get("num_local_experts") or cfg.get("num_experts")
    if experts:
        mlp = 3 * h * cfg.get("moe_intermediate_size", i) * cfg["num_experts_per_tok"] + h * experts
    else:
        mlp = 3 * h * i
    per_layer = h * (q + 2 * kv) + q * h + mlp + 2 * h
    return L * per_layer + h + h * v, h * v


def kv_bytes_per_token(cfg: dict, elem: int = 2) -> int:
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * hd * elem
