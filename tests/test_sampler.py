"""The batch sampler on hand-made logits: each control does exactly what it says, row by row."""
from __future__ import annotations

import torch

from worker.runner.sampler import SamplingBatch, sample


def batch(B, **kw) -> SamplingBatch:
    temps = kw.pop("temperature", torch.ones(B))
    base = dict(temperature=temps, top_p=None, top_k=None, min_p=None, all_greedy=bool((temps == 0).all()),
                any_greedy=bool((temps == 0).any()), generators={})
    base.update(kw)
    return SamplingBatch(**base)


def draws(logits, b, n=400):
    seen = [set() for _ in range(logits.shape[0])]
    for _ in range(n):
        for row, t in enumerate(sample(logits, b).token_ids.tolist()):
            seen[row].add(t)
    return seen


def test_greedy_rows_take_the_argmax_beside_random_rows():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
    b = batch(2, temperature=torch.tensor([0.0, 1.0]))
    seen = draws(logits, b, 200)
    assert seen[0] == {1} and seen[1] == {0, 1, 2}


def test_top_k_keeps_exactly_k_tokens_per_row():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]] * 2)
    b = batch(2, top_k=torch.tensor([2, 5]))
    seen = draws(logits, b, 1500)
    assert seen[0] == {0, 1} and seen[1] == {0, 1, 2, 3, 4}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    b = batch(1, top_p=torch.tensor([0.75]))
    assert draws(probs.log(), b, 400)[0] == {0, 1}


def test_min_p_drops_tokens_below_a_share_of_the_best():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    b = batch(1, min_p=torch.tensor([0.25]))  # threshold 0.125
    assert draws(probs.log(), b, 400)[0] == {0, 1, 2}


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[2.0, 1.0, 0.0]] * 2)
    b = batch(2, temperature=torch.tensor([0.05, 50.0]))
    counts = torch.zeros(2, 3)
    for _ in range(600):
        t = sample(logits, b).token_ids
        counts[0, t[0]] += 1
        counts[1, t[1]] += 1
    assert counts[0, 0] > 590
    assert counts[1].min() > 120  # nearly uniform


def test_seeded_rows_repeat_and_do_not_depend_on_other_rows():
    logits = torch.randn(3, 50)
    def run(other_rows):
        g = torch.Generator().manual_seed(7)
        lg = torch.cat([other_rows, logits[1:2]])
        b = batch(lg.shape[0], generators={lg.shape[0] - 1: g})
        return [sample(lg, b).token_ids[-1].item() for _ in range(20)]
    assert run(torch.randn(1, 50)) == run(torch.randn(4, 50))


def test_penalties_follow_openai_and_hf_definitions():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    counts = torch.tensor([[2, 1, 0, 0]])
    b = batch(1, temperature=torch.tensor([0.0]), presence=torch.tensor([0.5]), frequency=torch.tensor([0.25]),
              output_counts=counts)
    from worker.runner.sampler import apply_penalties
    got = apply_penalties(logits, b)
    assert torch.allclose(got, torch.tensor([[2.0 - 0.5 - 0.5, -1.0 - 0.25 - 0.5, 0.5, 0.0]]))
    b2 = batch(1, temperature=torch.tensor([0.0]), repetition=torch.tensor([2.0]),
               seen_mask=torch.tensor([[True, True, False, False]]))
    assert torch.allclose(apply_penalties(logits, b2), torch.tensor([[1.0, -2.0, 0.5, 0.0]]))


def test_min_tokens_bans_end_tokens_for_listed_rows_only():
    logits = torch.tensor([[0.0, 9.0, 1.0], [0.0, 9.0, 1.0]])
    b = batch(2, temperature=torch.zeros(2), ban_rows=torch.tensor([0]), ban_cols=torch.tensor([1]))
    assert sample(logits, b).token_ids.tolist() == [2, 1]


def test_logprobs_are_raw_model_logprobs_with_top_k():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    b = batch(1, temperature=torch.zeros(1), max_logprobs=2)
    out = sample(logits, b)
    ref = torch.log_softmax(logits, -1)
    assert out.token_ids.tolist() == [2]
    assert torch.allclose(out.token_logprobs, ref[:, 2])
    assert out.top_ids.tolist() == [[2, 1]] and torch.allclose(out.top_logprobs, ref[:, [2, 1]])
