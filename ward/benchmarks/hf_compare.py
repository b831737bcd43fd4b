"""The engine vs Hugging Face transformers on the same requests: 32 prompts of the default model
through the engine together, and the same 32 through transformers' generate one by one.
Greedy, a fixed 64 new tokens each (EOS ignored), so both produce the same number of tokens."""
from __future__ import annotations

import time

import torch

PROMPTS = [
    "Hello", "The capital of France is", "1, 2, 3, 4, 5,", "def fibonacci(n):", "Once upon a time,",
    "List three symptoms of dehydration:", "Question: What organ pumps blood?\nAnswer:", "A nurse should always",
    "Write a haiku about the winter moon:", "SELECT name FROM patients WHERE", "In summary, the findings were",
    "The quick brown fox jumps over the lazy dog. " * 6, "Translate to French: The patient has a mild fever.",
    "Q: Is 17 a prime number?\nA:", "import torch\nimport torch.nn as nn\n", "Explain photosynthesis briefly:",
]
PROMPTS = (PROMPTS + [p + " Please continue." for p in PROMPTS])[:32]


def run(model: str = "smollm2-135m-instruct", device: str = "cpu", new_tokens: int = 64) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker import LLM, SamplingParams
    from worker.model.registry import resolve_model

    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path)
    ids = [tok(p).input_ids for p in PROMPTS]
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    llm = LLM(model=path, device=device, dtype=str(dtype).split(".")[-1])
    params = SamplingParams(temperature=0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)
    llm.generate([{"prompt_token_ids": ids[0]}], params)  # warm-up
    t = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": x} for x in ids], params)
    engine_s = time.perf_counter() - t
    engine_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    hf.generate(torch.tensor([ids[0]], device=device), max_new_tokens=2, do_sample=False, pad_token_id=tok.eos_token_id)
    t = time.perf_counter()
    hf_tokens = 0
    for x in ids:
        with torch.no_grad():
            out = hf.generate(torch.tensor([x], device=device), attention_mask=torch.ones(1, len(x), dtype=torch.long, device=device),
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=tok.eos_token_id)
        hf_tokens += out.shape[1] - len(x)
    hf_s = time.perf_counter() - t
    result = {
        "requests": len(ids), "new_tokens_each": new_tokens, "device": device, "dtype": str(dtype),
        "engine_tok_s": round(engine_tokens / engine_s, 1), "engine_seconds": round(engine_s, 2),
        "transformers_one_by_one_tok_s": round(hf_tokens / hf_s, 1), "transformers_seconds": round(hf_s, 2),
    }
    result["speedup"] = round(result["engine_tok_s"] / result["transformers_one_by_one_tok_s"], 2)
    return result
