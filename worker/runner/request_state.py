"""The runner's state of one request (what its row in the InputBatch does not hold)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from worker.sampling_params import SamplingParams


@dataclass
class RunnerRequest:
    req_id: str
    row: int  # its row in the InputBatch
    num_prompt_tokens: int
    params: SamplingParams
    generator: torch.Generator | None = None
    output_counts: dict[int, int] = field(default_factory=dict)
    # anything beyond plain greedy argmax (temperature, penalties, logprobs, end-token bans)
    special: bool = False
    penalties: bool = False
    banned_until_min: tuple[int, ...] = ()
    matcher: Any = None  # the choice's grammar matcher (llguidance), advanced with each sampled token
