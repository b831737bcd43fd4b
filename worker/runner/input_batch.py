"""Per-request runner state kept in persistent numpy rows, so each step's flat inputs are built
with a few vectorised operations instead of a Python loop over requests.

A request keeps its row from admission until it is freed; freed rows are reused. A model with
several KV groups (``worker.engine.kv_layout``) has a block table per group; every group's table
of a request has the same length, and block ids arrive as one list per group.
"""
from __future__ import annotations

import numpy as np


class InputBatch:
    def __init__(self, max_reqs: int, max_model_len: int, max_blocks: int, num_kv_groups: int = 1) -> None:
        self.token_ids = np.zeros((max_reqs, max_model_len + 1), dtype=np.int64)
        self.num_kv_groups = num_kv_groups
        self.block_tables = np.zeros((num_kv_groups, max_reqs, max_blocks), dtype=np.int32)
        self.block_table = self.block_tables[0]
        self.num_blocks = np.zeros(max_reqs, dtype=np.int64)
        self.num_tokens = np.zeros(max_reqs, dtype=np.int64)  # prompt + sampled so far
        self.num_computed = np.zeros(max_reqs, dtype=np.int64)
        # a row's last token may still be on the device: its index in the sampled tensor of step
        # ``pending_step`` (-1: the host copy in token_ids is current)
        self.pending_idx = np.full(max_reqs, -1, dtype=np.int64)
        self.pending_step = np.full(max_reqs, -1, dtype=np.int64)
        self.row_of: dict[str, int] = {}
        self._free = list(range(max_reqs - 1, -1, -1))

    def add(self, req_id: str, token_ids: list[int], block_ids, num_computed: int) -> int:
        """``block_ids``: a list, or with several KV groups one list per group."""
        row = self._free.pop()
        self.row_of[req_id] = row
        n = len(token_ids)
        self.token_ids[row, :n] = token_ids
        self.num_tokens[row] = n
        self.num_blocks[row] = 0
        self.append_blocks(row, block_ids)
        self.num_computed[row] = num_computed
        self.pending_idx[row] = -1
        return row

    def remove(self, req_id: str) -> None:
        row = self.row_of.pop(req_id, None)
        if row is not None:
            self._free.append(row)

    def append_blocks(self, row: int, block_ids) -> None:
        """``block_ids``: a list, or with several KV groups one list per group (equal lengths)."""
        start = self.num_blocks[row]
        if self.num_kv_groups == 1:
            if block_ids:
                self.block_table[row, start : start + len(block_ids)] = block_ids
                self.num_blocks[row] = start + len(block_ids)
            return
        n = len(block_ids[0])
        if n:
            for g, ids in enumerate(block_ids):
                self.block_tables[g, row, start : start + n] = ids
            self.num_blocks[row] = start + n

    def tokens(self, req_id: str) -> np.ndarray:
        row = self.row_of[req_id]
        return self.token_ids[row, : self.num_tokens[row]]
