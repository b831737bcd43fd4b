"""The step-input buffers' decode order: the requests longest first, copied with the step's inputs."""
from __future__ import annotations

import numpy as np
import torch

from worker.runner.input_buffers import InputBuffers


def test_decode_rows_are_ordered_longest_first_with_padding_last_and_uploaded() -> None:
    buffers = InputBuffers(max_tokens=16, max_reqs=8, max_blocks=4, device=torch.device("cpu"))
    buffers.seq_lens_np[:5] = [40, 700, 3, 700, 90]
    buffers.pad_decode(5, 7)  # two graph-padding rows of length 0
    buffers.order_longest_first(7)
    buffers.upload(7, 7, 0, ordered=True)
    order = buffers.request_order[:7].tolist()
    assert order == [1, 3, 4, 0, 2, 5, 6]  # ties keep row order; padding rows come last
    assert sorted(order) == list(range(7))
    lengths = buffers.seq_lens[:7].numpy()[order]
    assert np.all(np.diff(lengths) <= 0)


def test_an_unordered_upload_leaves_the_order_alone() -> None:
    buffers = InputBuffers(max_tokens=16, max_reqs=8, max_blocks=4, device=torch.device("cpu"))
    buffers.seq_lens_np[:3] = [1, 2, 3]
    buffers.order_longest_first(3)
    buffers.upload(3, 3, 0)
    assert buffers.request_order[:3].tolist() == [0, 0, 0]
