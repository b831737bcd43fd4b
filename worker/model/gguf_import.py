"""Writes a Hugging Face model directory (config, safetensors, tokenizer, chat template,
generation config) from a GGUF file. transformers reads and de-quantizes the GGUF."""
from __future__ import annotations

import os
import shutil
import tempfile

from worker.errors import ModelLoadError


def import_gguf(gguf_path: str, out_dir: str, dtype: str = "float32", progress: bool = True) -> str:
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
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        steps.update()
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=getattr(torch, dtype), local_files_only=True
        )
        steps.update()
    except Exception as exc:
        raise ModelLoadError(f"{gguf_path}: transformers cannot read this GGUF file: {exc}") from exc
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".import-", dir=parent)
    try:
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        steps.update()
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are written de-quantized
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
