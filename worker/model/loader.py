"""Builds the model on its device and fills its weights: from safetensors (one file or sharded
with an index), or random weights of the real architecture (``dummy``, for benchmarks)."""
from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable
from types import ModuleType

import torch

from worker.attention.backend import AttentionBackend
from worker.errors import ModelLoadError
from worker.model import ops as torch_ops
from worker.model.gemma import GemmaForCausalLM
from worker.model.llama import LlamaForCausalLM
from worker.model.spec import ModelSpec

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\."
                     r"(weight|weight_scale_inv|weight_scale|input_scale)$")
# transformers 5 holds a layer's experts stacked: gate_up_proj [E, 2I, hidden] (gate rows first) and
# down_proj [E, hidden, I], which are w13 and w2 as they are
_STACKED_EXPERTS = {"mlp.experts.gate_up_proj": "w13", "mlp.experts.down_proj": "w2"}
_SKIP = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
# Multimodal checkpoints (Gemma3ForConditionalGeneration, e.g. MedGemma): the language model's
# tensors under either prefix transformers has written; the vision tower and projector are skipped.
_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
             ("language_model.lm_head.", "lm_head."))
_SKIP_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")

CausalLM = LlamaForCausalLM | GemmaForCausalLM
Rows = slice | tuple | None  # where in the parameter a checkpoint tensor goes (fused or stacked weights)


def _canonical(name: str) -> str | None:
    if name.startswith(_SKIP_PREFIXES):
        return None
    for prefix, replacement in _PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return name


def build_model(
    spec: ModelSpec,
    backend: AttentionBackend,
    device: torch.device,
    dtype: torch.dtype,
    max_position: int,
    ops: ModuleType = torch_ops,
    prepare: Callable[[CausalLM], None] | None = None,
) -> CausalLM:
    """The model with uninitialised parameters on ``device`` (no time spent on random init).

    ``prepare`` runs on the model before any memory is taken (its tensors on the meta device, in
    ``dtype``): module swaps there (a quantized checkpoint's layers) allocate only what they keep,
    so a 70B INT4 model never needs its float size on the card."""
    cls = GemmaForCausalLM if spec.is_gemma else LlamaForCausalLM
    with torch.device("meta"):
        model = cls(spec, backend, ops, max_position=max_position)
    model = model.to(dtype)
    if prepare is not None:
        prepare(model)
    model = model.to_empty(device=device)
    model.init_buffers()
    return model.eval().requires_grad_(False)


def _target(model: CausalLM, spec: ModelSpec, name: str) -> tuple[torch.Tensor, Rows] | None:
    """The parameter (and index into it, for fused or stacked weights) a checkpoint tensor goes to."""
    name = _canonical(name)
    if name is None or name.endswith(_SKIP):
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
    expert = _EXPERT.match(rest)
    if expert and spec.moe is not None:
        index, which, kind = int(expert.group(1)), expert.group(2), expert.group(3)
        if hasattr(layer.mlp, "expert_placer"):  # quantized experts place their own tensors
            return layer.mlp.expert_placer(index, which, kind, name)
        if kind != "weight":
            raise ModelLoadError(f"unexpected tensor {name!r} in checkpoint (its experts are not quantized)")
        return _expert_target(layer.mlp, index, which, spec.moe.intermediate_size)
    if rest in _STACKED_EXPERTS and spec.moe is not None:  # experts already stacked, in our layout
        return getattr(layer.mlp, _STACKED_EXPERTS[rest]), None
    if rest.startswith("block_sparse_moe.gate."):  # Mixtral's router
        rest = "mlp.gate." + rest.rpartition(".")[2]
    module_name, _, kind = rest.rpartition(".")
    if kind in ("k_scale", "v_scale"):  # FP8 KV cache scales (worker.model.quant.kv_cache)
        from worker.model.quant.kv_cache import kv_scale_target

        return kv_scale_target(layer, kind, name)
    fused = _fused_rows(spec).get(module_name)
    if fused is not None:
        attr, rows = fused
        module = layer.get_submodule(attr)
        if hasattr(module, "placer"):  # a quantized layer places its own tensors
            return module.placer(kind, rows, name)
        return getattr(module, kind), rows
    module = _submodule(layer, module_name)
    if hasattr(module, "placer"):
        return module.placer(kind, None, name)
    try:
        return layer.get_parameter(rest), None
    except AttributeError:
        raise ModelLoadError(f"unexpected tensor {name!r} in checkpoint") from None


def _submodule(layer, name: str):
    try:
        return layer.get_submodule(name)
    except AttributeError:
        return None


def _fused_rows(spec: ModelSpec) -> dict[str, tuple[str, slice]]:
    """Checkpoint modules that the model holds fused: (our module, its rows)."""
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    inter = spec.intermediate_size
    return {
        "self_attn.q_proj": ("self_attn.qkv_proj", slice(0, q)),
        "self_attn.k_proj": ("self_attn.qkv_proj", slice(q, q + kv)),
        "self_attn.v_proj": ("self_attn.qkv_proj", slice(q + kv, q + 2 * kv)),
        "mlp.gate_proj": ("mlp.gate_up_proj", slice(0, inter)),
        "mlp.up_proj": ("mlp.gate_up_proj", slice(inter, 2 * inter)),
    }


def _expert_target(moe, expert: int, which: str, inter: int) -> tuple[torch.Tensor, Rows]:
    """Per-expert tensors into the stacked w13 (gate rows, then up rows) and w2."""
    if which in ("w1", "gate_proj"):
        return moe.w13, (expert, slice(0, inter))
    if which in ("w3", "up_proj"):
        return moe.w13, (expert, slice(inter, 2 * inter))
    return moe.w2, (expert,)


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


checkpoint_files = _checkpoint_files  # the safetensors files of a model directory (memory sizing reads their headers)


def load_weights(model: CausalLM, spec: ModelSpec, model_dir: str, read=None) -> None:
    """Fills every parameter from the checkpoint. ``read(file, name)``, when given, returns the part of
    a checkpoint tensor this model holds (a tensor-parallel rank's slice); by default the whole tensor."""
    from safetensors import safe_open

    device = next(model.parameters()).device
    expected = {id(p): n for n, p in model.named_parameters()}
    filled: dict[int, int] = {}  # parameter -> elements filled
    for path in _checkpoint_files(model_dir):
        try:
            opened = safe_open(path, framework="pt", device="cpu")
        except Exception as exc:  # SafetensorError: a truncated copy or another file under this name
            raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
        with opened as f:
            for name in f.keys():
                target = _target(model, spec, name)
                if target is None:
                    continue
                param, rows = target
                tensor = f.get_tensor(name) if read is None else read(f, name)
                if callable(rows):  # a quantized layer's placer: (destination, tensor as it lands)
                    dst, tensor = rows(tensor)
                else:
                    dst = param.data if rows is None else param.data[rows]
                if tuple(dst.shape) != tuple(tensor.shape):
                    raise ModelLoadError(f"{name}: shape {tuple(tensor.shape)} in checkpoint, model expects {tuple(dst.shape)}")
                dst.copy_(tensor.to(device=device, dtype=dst.dtype))
                filled[id(param)] = filled.get(id(param), 0) + dst.numel()
    params = dict(model.named_parameters())
    missing = [n for pid, n in expected.items() if filled.get(pid, 0) < params[n].numel()]
    if missing:
        raise ModelLoadError(f"{model_dir}: checkpoint lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def fill_dummy_weights(model: CausalLM, seed: int = 0) -> None:
    """Random weights of the real architecture: small uniform values, norms at one (Gemma's
    (1 + w) norms at zero)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    gemma = isinstance(model, GemmaForCausalLM)
    for name, p in model.named_parameters():
        if not p.dtype.is_floating_point or p.element_size() == 1:
            continue  # quantized tensors: their layer fills them (worker.model.quant)
        if "norm" in name:
            p.data.fill_(0.0 if gemma else 1.0)
        else:
            p.data.uniform_(-0.02, 0.02, generator=gen)
