"""Prompt logprobs: how likely the model found each prompt token given the ones before it (OpenAI's
completions ``echo`` with ``logprobs``). Computed from a prefill chunk's hidden states, in slices so
a long prompt never holds [tokens, vocab] logits at once."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.engine.scheduler_output import SampledLogprobs

SLICE_TOKENS = 256  # positions whose full-vocabulary logits exist at one time


@dataclass
class PromptLogprobs:
    token_logprobs: torch.Tensor  # [m] the logprob of each target token
    top_logprobs: torch.Tensor | None  # [m, k]
    top_ids: torch.Tensor | None  # [m, k]

    def to_host(self) -> list[SampledLogprobs]:
        lps = self.token_logprobs.tolist()
        if self.top_ids is None:
            return [SampledLogprobs(lp, [], []) for lp in lps]
        return [SampledLogprobs(lp, ids, vals)
                for lp, ids, vals in zip(lps, self.top_ids.tolist(), self.top_logprobs.tolist())]


def prompt_logprobs(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, k: int) -> PromptLogprobs:
    """``hidden`` [m, H] of positions p, ``targets`` [m] the tokens at p + 1; ``k`` top alternatives."""
    targets = targets.to(hidden.device)
    token_lps, top_lps, top_ids = [], [], []
    for s in range(0, hidden.shape[0], SLICE_TOKENS):
        logprobs = torch.log_softmax(model.compute_logits(hidden[s : s + SLICE_TOKENS]).float(), dim=-1)
        token_lps.append(logprobs.gather(-1, targets[s : s + SLICE_TOKENS, None]).squeeze(-1))
        if k > 0:
            vals, ids = logprobs.topk(k, dim=-1)
            top_lps.append(vals)
            top_ids.append(ids)
    return PromptLogprobs(torch.cat(token_lps), torch.cat(top_lps) if k > 0 else None,
                          torch.cat(top_ids) if k > 0 else None)
