"""Per-request runner state kept in persistent numpy rows, so each step's flat inputs are built
with a few vectorised operations instead of a Python loop over requests.

A request keeps its row from admission until it is freed; freed rows are reused.
"""
from __future__ import annotations

import numpy as np


class InputBatch:
    def __init__(self, max_reqs: int, max_model_len: int, max_blocks: int) -> None:
        self.token_ids = np.zeros((max_reqs, max_model_len + 1), dtype=np.int64)
        self.block_table = np.zeros((max_reqs, max_blocks), dtype=np.int32)
        self.num_blocks = np.zeros(max_reqs, dtype=np.int64)
        self.num_tokens = np.zeros(max_reqs, dtype=np.int64)  # prompt + sampled so far
        self.num_computed = np.zeros(max_reqs, dtype=np.int64)
        # a row's last token may still be on the device: its index in the sampled tensor of step
        # ``pending_step`` (-1: the host copy in token_ids is current)
        self.pending_idx = np.full(max_reqs, -1, dtype=np.int64)
        self.pending_step = np.full(max_reqs, -1, dtype=np.int64)
        self.row_of: dict[str, int] = {}
        self._free = list(range(max_reqs - 1, -1, -1))

    def add(self, req_id: str, token_ids: list[int], block_ids: list[int], num_computed: int) -> int:
        row = self._free.pop()
        self.row_of[req_id] = row
        n = len(token_ids)
        self.token_ids[row, :n] = token_ids
        self.num_tokens[row] = n
        self.block_table[row, : len(block_ids)] = block_ids
        self.num_blocks[row] = len(block_ids)
        self.num_computed[row] = num_computed
        self.pending_idx[row] = -1
        return row

    def remove(self, req_id: str) -> None:
        row = self.row_of.pop(req_id, None)
        if row is not None:
            self._free.append(row)

    def append_blocks(self, row: int, block_ids: list[int]) -> None:
        if block_ids:
            start = self.num_blocks[row]
            self.block_table[row, start : start + len(block_ids)] = block_ids
            self.num_blocks[row] = start + len(block_ids)

    def tokens(self, req_id: str) -> np.ndarray:
        row = self.row_of[req_id]
        return self.token_ids[row, : self.num_tokens[row]]
