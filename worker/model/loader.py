"""Builds the model on its device and fills its weights: from safetensors (one file or sharded
with an index), or random weights of the real architecture (``dummy``, for benchmarks)."""
from __future__ import annotations

import glob
import json
import os
import re
from types import ModuleType

import torch

from worker.attention.backend import AttentionBackend
from worker.errors import ModelLoadError
from worker.model import ops as torch_ops
from worker.model.llama import LlamaForCausalLM
from worker.model.spec import ModelSpec

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_SKIP = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


def build_model(
    spec: ModelSpec,
    backend: AttentionBackend,
    device: torch.device,
    dtype: torch.dtype,
    max_position: int,
    ops: ModuleType = torch_ops,
) -> LlamaForCausalLM:
    """The model with uninitialised parameters on ``device`` (no time spent on random init)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(spec, backend, ops, max_position=max_position)
    model = model.to_empty(device=device).to(dtype)
    model.init_buffers()
    return model.eval().requires_grad_(False)


def _target(model: LlamaForCausalLM, spec: ModelSpec, name: str) -> tuple[torch.Tensor, slice | None] | None:
    """The parameter (and row slice, for fused weights) a checkpoint tensor goes to."""
    if name.endswith(_SKIP):
        return None
    if name == "model.embed_tokens.weight":
        return model.embed_tokens.weight, None
    if name == "model.norm.weight":
        return model.norm.weight, None
    if name == "lm_head.weight":
        return (model.lm_head.weight, None) if model.lm_head is not None else None
    m = _LAYER.match(name)
    if not m:
        raise ModelLoadError(f"unexpected tensor {name!r} in checkpoint")
    layer = model.layers[int(m.group(1))]
    rest = m.group(2)
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    inter = spec.intermediate_size
    fused = {
        "self_attn.q_proj": (layer.self_attn.qkv_proj, slice(0, q)),
        "self_attn.k_proj": (layer.self_attn.qkv_proj, slice(q, q + kv)),
        "self_attn.v_proj": (layer.self_attn.qkv_proj, slice(q + kv, q + 2 * kv)),
        "mlp.gate_proj": (layer.mlp.gate_up_proj, slice(0, inter)),
        "mlp.up_proj": (layer.mlp.gate_up_proj, slice(inter, 2 * inter)),
    }
    module_name, _, kind = rest.rpartition(".")
    if module_name in fused:
        module, rows = fused[module_name]
        return getattr(module, kind), rows
    try:
        return layer.get_parameter(rest), None
    except AttributeError:
        raise ModelLoadError(f"unexpected tensor {name!r} in checkpoint") from None


def _checkpoint_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_dir, s) for s in shards]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise ModelLoadError(f"{model_dir}: shards named in the index are missing: {missing}")
        return files
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise ModelLoadError(f"{model_dir}: no *.safetensors weights (use load_format='dummy' for random weights)")
    return files


def load_weights(model: LlamaForCausalLM, spec: ModelSpec, model_dir: str) -> None:
    from safetensors import safe_open

    device = next(model.parameters()).device
    expected = {id(p): n for n, p in model.named_parameters()}
    filled: dict[int, int] = {}  # parameter -> rows filled
    for path in _checkpoint_files(model_dir):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                target = _target(model, spec, name)
                if target is None:
                    continue
                param, rows = target
                tensor = f.get_tensor(name)
                dst = param.data if rows is None else param.data[rows]
                if tuple(dst.shape) != tuple(tensor.shape):
                    raise ModelLoadError(f"{name}: shape {tuple(tensor.shape)} in checkpoint, model expects {tuple(dst.shape)}")
                dst.copy_(tensor.to(device=device, dtype=dst.dtype))
                filled[id(param)] = filled.get(id(param), 0) + dst.shape[0]
    missing = [n for pid, n in expected.items() if filled.get(pid, 0) < dict(model.named_parameters())[n].shape[0]]
    if missing:
        raise ModelLoadError(f"{model_dir}: checkpoint lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def fill_dummy_weights(model: LlamaForCausalLM, seed: int = 0) -> None:
    """Random weights of the real architecture: small uniform values, norms at one."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data.fill_(1.0)
        else:
            p.data.uniform_(-0.02, 0.02, generator=gen)
