"""Writes a Hugging Face model directory (config, safetensors, tokenizer, chat template,
generation config) from a GGUF file. transformers reads and de-quantizes the GGUF; with
``keep_quantized`` the decoder's Q4_0/Q4_1/Q4_K/Q8_0 projections are written in Ward's integer
layout instead (worker/model/quant/gguf.py), so they stay 4 or 8 bits on disk and on the device."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from worker.errors import ModelLoadError


def import_gguf(gguf_path: str, out_dir: str, dtype: str = "float32", progress: bool = True,
                keep_quantized: bool = False) -> str:
    """Converts ``gguf_path`` into ``out_dir`` (written atomically: a partial directory never appears)."""
    if not os.path.isfile(gguf_path):
        raise ModelLoadError(f"{gguf_path}: no such GGUF file")
    if os.path.exists(os.path.join(out_dir, "config.json")):
        raise ModelLoadError(f"{out_dir} already holds a model; remove it first")
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    steps = tqdm(total=4, desc=f"importing {name}", disable=not progress, unit="step")
    with _one_parse_per_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            steps.update()
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=getattr(torch, dtype), local_files_only=True
            )
            steps.update()
        except Exception as exc:
            steps.close()
            raise ModelLoadError(f"{gguf_path}: transformers cannot read this GGUF file: {exc}") from exc
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
        quantization = _keep_quantized(gguf_path, state, model.config) if keep_quantized else None
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".import-", dir=parent)
    try:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        steps.update()
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are written de-quantized
        if quantization is not None:
            config.quantization_config = quantization
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        steps.update()
        if os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        steps.close()
    return out_dir


@contextlib.contextmanager
def _one_parse_per_file() -> Iterator[None]:
    """transformers parses a GGUF's metadata anew for the tokenizer, the config and the weights, each
    a walk over every vocabulary entry (seconds for a 50,000-token vocabulary, more for larger ones).
    Within one import the first parse of a file serves every later reader of it (read-only memory
    maps: nothing a reader hands out can be written)."""
    import gguf

    original = gguf.GGUFReader
    parsed: dict[str, object] = {}  # by real path; readers that may write ("r+") get their own

    def reader(path: str | os.PathLike, mode: str = "r"):
        if mode != "r":
            return original(path, mode)
        key = os.path.realpath(path)
        if key not in parsed:
            parsed[key] = original(path)
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


_PROJECTIONS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}


_FUSED = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
          ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))  # projections one layer of the model holds


def _keep_quantized(gguf_path: str, state: dict, config) -> dict | None:
    """Replaces the float projection weights in ``state`` by Ward's integer layout where the GGUF
    holds them in a block type Ward keeps (Q4_0, Q4_1, Q4_K, Q8_0); returns the quantization_config to
    write, or None when no projection can be kept (all stay float then).

    One bit width serves the model (4-bit where any projection is 4-bit): projections the model
    fuses (q/k/v, gate/up) stay quantized together or not at all, and those in another block type
    (the Q6_K layers of a Q4_K_M file) stay float, listed in ``modules_to_not_convert``.

    Each converted weight is de-quantized again and compared with transformers' reading of the same
    tensor (with and without its q/k row order), so a layout mistake cannot pass silently."""
    import logging

    import torch
    import gguf

    from worker.model.quant.gguf import KEPT, block_layout, row_order_of_rope_permute, to_ward
    from worker.model.quant.packing import dequantize_int

    log = logging.getLogger("ward.worker.model")
    reader = gguf.GGUFReader(gguf_path)  # looked up here, so that an import's one parse serves it too
    found = {}
    for t in reader.tensors:
        parts = t.name.split(".")  # blk.N.attn_q.weight
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in _PROJECTIONS and parts[3] == "weight":
            found[f"model.layers.{parts[1]}.{_PROJECTIONS[parts[2]]}"] = t
    layers = sorted({int(name.split(".")[2]) for name in found})
    groups = [[f"model.layers.{i}.{p}" for p in fused] for i in layers for fused in _FUSED]
    groups = [g for g in groups if all(name in found for name in g)]
    kinds_of = [{found[name].tensor_type.name for name in g} for g in groups]
    keepable = [k <= set(KEPT) and len({block_layout(x)[0] for x in k}) == 1 for k in kinds_of]
    widths = {block_layout(next(iter(k)))[0] for k, ok in zip(kinds_of, keepable) if ok}
    if not widths:
        log.warning("%s: projections are %s; none in a block type kept quantized (%s), writing float weights",
                    gguf_path, sorted(set().union(*kinds_of)), ", ".join(KEPT))
        return None
    bits = min(widths)  # 4-bit where there is any
    kept = [g for g, k, ok in zip(groups, kinds_of, keepable) if ok and block_layout(next(iter(k)))[0] == bits]
    kept_kinds = set().union(*(kinds_of[groups.index(g)] for g in kept))
    floats = sorted(name for g in groups if g not in kept for name in g)
    if floats:
        log.warning("%s: %d of %d projections stay float (another block type or bit width: %s)", gguf_path,
                    len(floats), len(found), sorted(set().union(*kinds_of) - kept_kinds))
    fmt = "offset" if kept_kinds & {"Q4_1", "Q4_K"} else "int"
    scale_dtype = torch.float32 if "Q4_K" in kept_kinds else torch.float16  # K-quant scales are products
    text = getattr(config, "text_config", None) or config
    heads = {"self_attn.q_proj": text.num_attention_heads,
             "self_attn.k_proj": getattr(text, "num_key_value_heads", None) or text.num_attention_heads}
    converted = {}
    for module in (name for g in kept for name in g):
        t = found[module]
        want = state.get(f"{module}.weight")
        if want is None:
            return None
        out_f, in_f = want.shape
        tensors = to_ward(t.data, t.tensor_type.name, out_f, in_f, fmt)
        tensors = {k: v.to(scale_dtype) if k in ("scales", "offsets") else v for k, v in tensors.items()}
        orders = [None]
        proj = module.split(".", 3)[3]
        if proj in heads:
            orders.append(row_order_of_rope_permute(out_f, heads[proj]))
        for order in orders:
            cand = tensors if order is None else {k: v[:, order].contiguous() for k, v in tensors.items()}
            w = dequantize_int(cand["qweight"], cand["scales"], cand.get("zeros"), bits, 32, torch.float32,
                               cand.get("offsets"))
            if torch.allclose(w.t(), want.float(), rtol=1e-3, atol=1e-6):
                break
        else:
            log.warning("%s: %s does not de-quantize to transformers' reading; writing float weights", gguf_path, module)
            return None
        converted[module] = cand
    for module, cand in converted.items():
        del state[f"{module}.weight"]
        state.update({f"{module}.{k}": v for k, v in cand.items()})
    config_out = {"quant_method": "ward-int", "bits": bits, "group_size": 32, "zero_format": fmt,
                  "scale_dtype": str(scale_dtype).removeprefix("torch."), "source": "gguf " + "/".join(sorted(kept_kinds))}
    if floats:
        config_out["modules_to_not_convert"] = floats
    return config_out
