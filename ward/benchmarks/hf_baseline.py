"""Hugging Face transformers' generate on the mixed-length workload (the same 256 requests as
`ward bench offline`'s mixed run): static batches, left-padded, each batch generating as many
tokens as its longest request; only the tokens each request asked for are counted."""
from __future__ import annotations

import random
import time

import torch


def mixed_requests() -> list[tuple[list[int], int]]:
    rng = random.Random(1)
    reqs = []
    for _ in range(256):
        prompt = [rng.randrange(1000, 120000) for _ in range(rng.randint(100, 1024))]
        reqs.append((prompt, rng.randint(100, 1024)))
    return reqs


def run_mixed(config: dict, batch: int = 128) -> dict:
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()  # random weights
    reqs = mixed_requests()
    counted = 0
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, len(reqs), batch):
        chunk = reqs[start : start + batch]
        width = max(len(p) for p, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long, device="cuda")
        mask = torch.zeros_like(ids)
        for i, (p, _) in enumerate(chunk):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        longest = max(n for _, n in chunk)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                           do_sample=False, pad_token_id=0)
        counted += sum(n for _, n in chunk)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"batch": batch, "out_tok_s": round(counted / dt, 1), "seconds": round(dt, 1), "counted_tokens": counted}
