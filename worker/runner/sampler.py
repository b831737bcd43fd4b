"""Sampling for the whole batch on the logits' device: penalties, logit bias, min_tokens, grammar
masks, temperature, top-k / top-p / min-p, per-request seeds, and logprobs with top-k alternatives.

Random rows use the exponential-race trick (argmax of p / q with q ~ Exp(1)), which samples
exactly from p; a seeded request draws its q from its own generator, so its tokens do not
depend on which other requests share the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.structured.bitmask import apply_bitmask


@dataclass
class SamplingBatch:
    """Per-row sampling inputs for the rows that sample this step (tensors on the logits' device)."""

    temperature: torch.Tensor  # [B] float32; 0 for greedy rows
    top_p: torch.Tensor | None  # [B] float32, or None when no row uses it
    top_k: torch.Tensor | None  # [B] int64 (vocab size = off), or None
    min_p: torch.Tensor | None  # [B] float32, or None
    all_greedy: bool
    any_greedy: bool
    generators: dict[int, torch.Generator]  # row -> generator of a seeded request
    # penalties (None when no row uses them)
    presence: torch.Tensor | None = None  # [B]
    frequency: torch.Tensor | None = None  # [B]
    repetition: torch.Tensor | None = None  # [B]
    output_counts: torch.Tensor | None = None  # [B, V] counts of generated tokens
    seen_mask: torch.Tensor | None = None  # [B, V] prompt or output token present (repetition penalty)
    # (row, token) pairs that may not be sampled yet: end tokens of rows still under min_tokens
    ban_rows: torch.Tensor | None = None
    ban_cols: torch.Tensor | None = None
    max_logprobs: int | None = None  # None: no row asked for logprobs
    # logit_bias as (row, token, bias) triples
    bias_rows: torch.Tensor | None = None
    bias_cols: torch.Tensor | None = None
    bias_values: torch.Tensor | None = None
    # grammar rows [G] and their int32 [G, ceil(V/32)] allowed-token bits
    bitmask_rows: torch.Tensor | None = None
    token_bitmask: torch.Tensor | None = None


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    token_logprobs: torch.Tensor | None = None  # [B] float32
    top_ids: torch.Tensor | None = None  # [B, K]
    top_logprobs: torch.Tensor | None = None  # [B, K]


def apply_penalties(logits: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
    if b.repetition is not None and b.seen_mask is not None:
        rp = b.repetition[:, None].expand_as(logits)
        penalized = torch.where(logits > 0, logits / rp, logits * rp)
        logits = torch.where(b.seen_mask, penalized, logits)
    if b.output_counts is not None:
        counts = b.output_counts.to(logits.dtype)
        if b.frequency is not None:
            logits = logits - b.frequency[:, None] * counts
        if b.presence is not None:
            logits = logits - b.presence[:, None] * (counts > 0).to(logits.dtype)
    return logits


def apply_top_k_top_p_min_p(logits: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
    if b.min_p is not None:
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * b.min_p[:, None]
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if b.top_k is None and b.top_p is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    if b.top_k is not None:
        ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
        sorted_logits = sorted_logits.masked_fill(ranks >= b.top_k[:, None], float("-inf"))
    if b.top_p is not None:
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of strictly better tokens
        sorted_logits = sorted_logits.masked_fill(before >= b.top_p[:, None], float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, b: SamplingBatch) -> SamplerOutput:
    """logits: [B, V] float32 for the rows that sample. Returns the chosen tokens (and logprobs)."""
    raw = logits
    if b.repetition is not None or b.output_counts is not None:
        logits = apply_penalties(logits, b)
    if b.bias_rows is not None:
        logits = logits.clone() if logits is raw else logits
        logits.index_put_((b.bias_rows, b.bias_cols), b.bias_values, accumulate=True)
    if b.ban_rows is not None:
        logits = logits.clone() if logits is raw else logits
        logits.index_put_((b.ban_rows, b.ban_cols), torch.tensor(float("-inf"), device=logits.device))
    if b.token_bitmask is not None:  # last: no bias or penalty can revive a token the grammar forbids
        logits = apply_bitmask(logits.clone() if logits is raw else logits, b.token_bitmask, b.bitmask_rows)
    greedy_tokens = logits.argmax(dim=-1) if b.any_greedy else None
    if b.all_greedy:
        tokens = greedy_tokens
    else:
        temp = torch.where(b.temperature > 0, b.temperature, torch.ones_like(b.temperature))
        scaled = apply_top_k_top_p_min_p(logits / temp[:, None], b)
        probs = torch.softmax(scaled, dim=-1)
        q = torch.empty_like(probs)
        if len(b.generators) < probs.shape[0]:
            q.exponential_()
        for row, gen in b.generators.items():
            q[row].exponential_(generator=gen)
        tokens = probs.div_(q).argmax(dim=-1)
        if greedy_tokens is not None:
            tokens = torch.where(b.temperature > 0, tokens, greedy_tokens)
    out = SamplerOutput(token_ids=tokens)
    if b.max_logprobs is not None:
        logprobs = torch.log_softmax(raw, dim=-1)
        out.token_logprobs = logprobs.gather(-1, tokens[:, None]).squeeze(-1)
        if b.max_logprobs > 0:
            out.top_logprobs, out.top_ids = logprobs.topk(b.max_logprobs, dim=-1)
    return out
