"""The structured-output workload, shared by Ward's benchmark and the vLLM peer's script (pure Python:
the peer imports it without Ward's dependencies).

Every request of a batch asks for the same JSON schema; the schema cannot be complete within the
token budget (at least 100 array items), so constrained and unconstrained requests decode the same
number of tokens and their throughputs compare directly. Prompts are random token ids below the
tokenizer's size, seeded."""
from __future__ import annotations

import random

SCHEMA = {
    "type": "object",
    "properties": {
        "patient": {"type": "string", "maxLength": 24},
        "observations": {
            "type": "array",
            "minItems": 100,
            "items": {"type": "object",
                      "properties": {"code": {"type": "string", "maxLength": 8},
                                     "value": {"type": "number"},
                                     "flag": {"enum": ["low", "normal", "high"]}},
                      "required": ["code", "value", "flag"], "additionalProperties": False},
        },
    },
    "required": ["patient", "observations"],
    "additionalProperties": False,
}
BATCHES = (1, 64)
PROMPT_TOKENS = 128
OUTPUT_TOKENS = 256


def prompts(batch: int, tokenizer_size: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed * 1000 + batch)
    top = max(tokenizer_size - 1, 1001)
    return [[rng.randrange(1000, top) for _ in range(PROMPT_TOKENS)] for _ in range(batch)]


def summary(plain_tok_s: float, schema_tok_s: float) -> dict:
    return {"plain_out_tok_s": round(plain_tok_s, 1), "schema_out_tok_s": round(schema_tok_s, 1),
            "schema_cost": round(1 - schema_tok_s / plain_tok_s, 4)}
