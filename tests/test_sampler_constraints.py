"""Grammar bitmasks and logit_bias in the batch sampler, on hand-made logits: a masked row only ever
samples allowed tokens (greedy or not, whatever the bias), other rows are untouched."""
from __future__ import annotations

import torch

from worker.runner.sampler import SamplingBatch, sample
from worker.structured.bitmask import apply_bitmask


def bits(allowed: list[int], vocab: int) -> torch.Tensor:
    words = torch.zeros((vocab + 31) // 32, dtype=torch.int64)
    for t in allowed:
        words[t // 32] |= 1 << (t % 32)
    return words.to(torch.int32)[None, :]  # the int32 view of the bit pattern, as llguidance writes it


def make_batch(temps: list[float], **kw) -> SamplingBatch:
    t = torch.tensor(temps)
    return SamplingBatch(temperature=t, top_p=None, top_k=None, min_p=None, all_greedy=bool((t == 0).all()),
                         any_greedy=bool((t == 0).any()), generators={}, **kw)


def test_bitmask_covers_high_bits_and_leaves_other_rows_alone():
    vocab = 70
    logits = torch.zeros(2, vocab)
    mask = bits([0, 31, 63, 69], vocab)  # bit 31 is the int32 sign bit
    apply_bitmask(logits, mask, torch.tensor([1]))
    assert torch.isfinite(logits[0]).all()
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [0, 31, 63, 69]


def test_masked_rows_sample_only_allowed_tokens_even_against_a_strong_bias():
    vocab = 40
    logits = torch.randn(2, vocab)
    b = make_batch([1.0, 0.0], bitmask_rows=torch.tensor([0, 1]),
                   token_bitmask=torch.cat([bits([3, 35], vocab), bits([7], vocab)]),
                   bias_rows=torch.tensor([0, 1]), bias_cols=torch.tensor([5, 8]),
                   bias_values=torch.tensor([100.0, 100.0]))
    seen = [set(), set()]
    for _ in range(300):
        for row, t in enumerate(sample(logits, b).token_ids.tolist()):
            seen[row].add(t)
    assert seen[0] == {3, 35} and seen[1] == {7}


def test_logit_bias_adds_to_its_row_only():
    logits = torch.zeros(2, 4)
    b = make_batch([0.0, 0.0], bias_rows=torch.tensor([0, 0]), bias_cols=torch.tensor([2, 1]),
                   bias_values=torch.tensor([5.0, -5.0]), max_logprobs=0)
    out = sample(logits, b)
    assert out.token_ids.tolist() == [2, 0]
    # logprobs stay the model's own, before bias and masks
    assert torch.allclose(out.token_logprobs, torch.log(torch.tensor([0.25, 0.25])))
