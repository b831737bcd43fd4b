"""Persistent step-input buffers: host arrays filled with numpy, copied to fixed device tensors
once per step. Fixed device addresses are what CUDA graphs replay against.

On CUDA the host side is pinned and double-buffered: while step N's copies may still be queued,
step N+1 is prepared in the other set (asynchronous scheduling).

A model with several KV groups has a block table and a slot mapping per group: group 0's are
``block_tables``/``slot_mapping``, the others' ``group_block_tables``/``group_slot_mappings``.
"""
from __future__ import annotations

import numpy as np
import torch

_FIELDS = {  # name -> (shape key, dtype)
    "input_ids": ("tokens", torch.int64),
    "positions": ("tokens", torch.int64),
    "slot_mapping": ("tokens", torch.int64),
    "query_start": ("reqs+1", torch.int32),
    "seq_lens": ("reqs", torch.int32),
    "block_tables": ("table", torch.int32),
    "logits_idx": ("reqs", torch.int64),
    "gather_dst": ("reqs", torch.int64),
    "gather_src": ("reqs", torch.int64),
    "request_order": ("reqs", torch.int32),
}


def _fields(num_kv_groups: int) -> dict:
    fields = dict(_FIELDS)
    for g in range(1, num_kv_groups):
        fields[f"block_tables_{g}"] = _FIELDS["block_tables"]
        fields[f"slot_mapping_{g}"] = _FIELDS["slot_mapping"]
    return fields


class _HostSet:
    def __init__(self, shapes: dict, fields: dict, pin: bool) -> None:
        self.tensors = {}
        self.arrays = {}
        for name, (key, dtype) in fields.items():
            t = torch.zeros(shapes[key], dtype=dtype, pin_memory=pin)
            self.tensors[name], self.arrays[name] = t, t.numpy()


class InputBuffers:
    def __init__(self, max_tokens: int, max_reqs: int, max_blocks: int, device: torch.device,
                 num_kv_groups: int = 1) -> None:
        pin = device.type == "cuda"
        self.device = device
        self.num_kv_groups = num_kv_groups
        fields = _fields(num_kv_groups)
        shapes = {"tokens": max_tokens, "reqs": max_reqs, "reqs+1": max_reqs + 1, "table": (max_reqs, max_blocks)}
        self._sets = [_HostSet(shapes, fields, pin) for _ in range(2 if pin else 1)]
        self._cur = 0
        dev = {name: torch.zeros(shapes[key], dtype=dtype, device=device) for name, (key, dtype) in fields.items()}
        self.input_ids = dev["input_ids"]
        self.positions = dev["positions"]
        self.slot_mapping = dev["slot_mapping"]
        self.query_start_loc = dev["query_start"]
        self.seq_lens = dev["seq_lens"]
        self.block_tables = dev["block_tables"]
        self.logits_idx = dev["logits_idx"]
        self.gather_dst = dev["gather_dst"]
        self.gather_src = dev["gather_src"]
        self.request_order = dev["request_order"]
        self.group_block_tables = [dev[f"block_tables_{g}"] for g in range(1, num_kv_groups)]
        self.group_slot_mappings = [dev[f"slot_mapping_{g}"] for g in range(1, num_kv_groups)]
        self.max_tokens, self.max_reqs, self.max_blocks = max_tokens, max_reqs, max_blocks
        self._bind()

    def _bind(self) -> None:
        a = self._sets[self._cur].arrays
        self.input_ids_np, self.positions_np, self.slot_mapping_np = a["input_ids"], a["positions"], a["slot_mapping"]
        self.query_start_np, self.seq_lens_np, self.block_tables_np = a["query_start"], a["seq_lens"], a["block_tables"]
        self.logits_idx_np, self.gather_dst_np, self.gather_src_np = a["logits_idx"], a["gather_dst"], a["gather_src"]
        self.request_order_np = a["request_order"]
        self.group_block_tables_np = [a[f"block_tables_{g}"] for g in range(1, self.num_kv_groups)]
        self.group_slot_mappings_np = [a[f"slot_mapping_{g}"] for g in range(1, self.num_kv_groups)]

    def flip(self) -> None:
        """Switches to the other host set (the one whose last copies are known to be done)."""
        self._cur = (self._cur + 1) % len(self._sets)
        self._bind()

    def _copy(self, name: str, dst: torch.Tensor, n: int) -> None:
        src = self._sets[self._cur].tensors[name]
        dst[:n].copy_(src[:n], non_blocking=self.device.type == "cuda")

    def order_longest_first(self, num_reqs: int) -> None:
        """Fills ``request_order`` with rows 0..num_reqs by falling sequence length (decode steps)."""
        self.request_order_np[:num_reqs] = np.argsort(-self.seq_lens_np[:num_reqs], kind="stable")

    def upload(self, num_tokens: int, num_reqs: int, num_sample: int, num_gather: int = 0,
               ordered: bool = False) -> None:
        """Copies the filled prefixes of every host buffer to the device (asynchronously on CUDA);
        ``ordered``: ``request_order`` too."""
        self._copy("input_ids", self.input_ids, num_tokens)
        self._copy("positions", self.positions, num_tokens)
        self._copy("slot_mapping", self.slot_mapping, num_tokens)
        self._copy("query_start", self.query_start_loc, num_reqs + 1)
        self._copy("seq_lens", self.seq_lens, num_reqs)
        self._copy("block_tables", self.block_tables, num_reqs)
        for g in range(1, self.num_kv_groups):
            self._copy(f"slot_mapping_{g}", self.group_slot_mappings[g - 1], num_tokens)
            self._copy(f"block_tables_{g}", self.group_block_tables[g - 1], num_reqs)
        if ordered:
            self._copy("request_order", self.request_order, num_reqs)
        self._copy("logits_idx", self.logits_idx, num_sample)
        if num_gather:
            self._copy("gather_dst", self.gather_dst, num_gather)
            self._copy("gather_src", self.gather_src, num_gather)

    def pad_decode(self, num_reqs: int, padded: int) -> None:
        """Makes rows num_reqs..padded harmless for a decode graph of size ``padded``: no KV write,
        zero-length context, one query row each."""
        if padded == num_reqs:
            return
        self.input_ids_np[num_reqs:padded] = 0
        self.positions_np[num_reqs:padded] = 0
        self.slot_mapping_np[num_reqs:padded] = -1
        for slots in self.group_slot_mappings_np:
            slots[num_reqs:padded] = -1
        self.seq_lens_np[num_reqs:padded] = 0
        self.query_start_np[num_reqs + 1 : padded + 1] = np.arange(num_reqs + 1, padded + 1)
