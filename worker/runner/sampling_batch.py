"""Turns the sampling requests of a step into the sampler's batched inputs."""
from __future__ import annotations

import numpy as np
import torch

from worker.runner.input_batch import InputBatch
from worker.runner.request_state import RunnerRequest
from worker.runner.sampler import SamplingBatch
from worker.structured.bitmask import fill_bitmask


def build_sampling_batch(
    states: list[RunnerRequest], input_batch: InputBatch, vocab: int, dev: torch.device, num_tokens: np.ndarray
) -> SamplingBatch:
    """The sampler's per-row inputs for the requests that sample this step (tensors on ``dev``).
    ``num_tokens[i]``: row i's tokens before the one sampled now (the slot it fills)."""
    params = [s.params for s in states]
    greedy = [p.greedy for p in params]
    temps = [0.0 if g else p.temperature for g, p in zip(greedy, params)]
    batch = SamplingBatch(
        temperature=torch.tensor(temps, dtype=torch.float32).to(dev, non_blocking=True),
        top_p=None,
        top_k=None,
        min_p=None,
        all_greedy=all(greedy),
        any_greedy=any(greedy),
        generators={i: s.generator for i, s in enumerate(states) if s.generator is not None},
    )
    if not batch.all_greedy:
        if any(p.top_p < 1.0 for p in params):
            batch.top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32).to(dev)
        if any(p.top_k > 0 for p in params):
            batch.top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params]).to(dev)
        if any(p.min_p > 0 for p in params):
            batch.min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32).to(dev)
    if any(s.penalties for s in states):
        counts = torch.zeros(len(states), vocab, dtype=torch.int32)
        for i, s in enumerate(states):
            if s.output_counts:
                ids = torch.tensor(list(s.output_counts.keys()))
                counts[i, ids] = torch.tensor(list(s.output_counts.values()), dtype=torch.int32)
        batch.output_counts = counts.to(dev)
        batch.presence = torch.tensor([p.presence_penalty for p in params], dtype=torch.float32).to(dev)
        batch.frequency = torch.tensor([p.frequency_penalty for p in params], dtype=torch.float32).to(dev)
        if any(p.repetition_penalty != 1.0 for p in params):
            seen = torch.zeros(len(states), vocab, dtype=torch.bool)
            for i, s in enumerate(states):
                prompt = torch.from_numpy(input_batch.tokens(s.req_id)[: s.num_prompt_tokens])
                seen[i, prompt] = True
            seen |= counts > 0
            batch.seen_mask = seen.to(dev)
            batch.repetition = torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32).to(dev)
    rows, cols = [], []
    for i, s in enumerate(states):
        if s.banned_until_min and num_tokens[i] - s.num_prompt_tokens < s.params.min_tokens:
            rows += [i] * len(s.banned_until_min)
            cols += s.banned_until_min
    if rows:
        batch.ban_rows = torch.tensor(rows).to(dev)
        batch.ban_cols = torch.tensor(cols).to(dev)
    bias = [(i, t, v) for i, p in enumerate(params) if p.logit_bias for t, v in p.logit_bias.items() if t < vocab]
    if bias:
        batch.bias_rows = torch.tensor([r for r, _, _ in bias]).to(dev)
        batch.bias_cols = torch.tensor([t for _, t, _ in bias]).to(dev)
        batch.bias_values = torch.tensor([v for _, _, v in bias], dtype=torch.float32).to(dev)
    # A matcher that has stopped belongs to a request that ended in the step before (its token here is
    # discarded): it has no mask to give.
    grammar_rows = [i for i, s in enumerate(states)
                    if s.matcher is not None and not s.matcher.is_stopped() and not s.matcher.is_error()]
    if grammar_rows:
        # The model's forward is already enqueued on the device: this host work overlaps it.
        mask = fill_bitmask([states[i].matcher for i in grammar_rows], vocab)
        batch.token_bitmask = mask.to(dev, non_blocking=True)
        batch.bitmask_rows = torch.tensor(grammar_rows).to(dev)
    ks = [p.logprobs for p in params if p.logprobs is not None]
    batch.max_logprobs = max(ks) if ks else None
    return batch
