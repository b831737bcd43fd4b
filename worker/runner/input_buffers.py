"""Persistent step-input buffers: host arrays filled with numpy (pinned on CUDA), copied to
fixed device tensors once per step. Fixed addresses are what CUDA graphs replay against."""
from __future__ import annotations

import numpy as np
import torch


class InputBuffers:
    def __init__(self, max_tokens: int, max_reqs: int, max_blocks: int, device: torch.device) -> None:
        pin = device.type == "cuda"
        self.device = device

        def host(shape, dtype):
            t = torch.zeros(shape, dtype=dtype, pin_memory=pin)
            return t, t.numpy()

        def dev(shape, dtype):
            return torch.zeros(shape, dtype=dtype, device=device)

        self.input_ids_cpu, self.input_ids_np = host(max_tokens, torch.int64)
        self.positions_cpu, self.positions_np = host(max_tokens, torch.int64)
        self.slot_mapping_cpu, self.slot_mapping_np = host(max_tokens, torch.int64)
        self.query_start_cpu, self.query_start_np = host(max_reqs + 1, torch.int32)
        self.seq_lens_cpu, self.seq_lens_np = host(max_reqs, torch.int32)
        self.block_tables_cpu, self.block_tables_np = host((max_reqs, max_blocks), torch.int32)
        self.logits_idx_cpu, self.logits_idx_np = host(max_reqs, torch.int64)
        self.input_ids = dev(max_tokens, torch.int64)
        self.positions = dev(max_tokens, torch.int64)
        self.slot_mapping = dev(max_tokens, torch.int64)
        self.query_start_loc = dev(max_reqs + 1, torch.int32)
        self.seq_lens = dev(max_reqs, torch.int32)
        self.block_tables = dev((max_reqs, max_blocks), torch.int32)
        self.logits_idx = dev(max_reqs, torch.int64)
        self.max_tokens, self.max_reqs, self.max_blocks = max_tokens, max_reqs, max_blocks

    def upload(self, num_tokens: int, num_reqs: int, num_sample: int) -> None:
        """Copies the filled prefixes of every host buffer to the device (asynchronously on CUDA)."""
        nb = self.device.type == "cuda"
        self.input_ids[:num_tokens].copy_(self.input_ids_cpu[:num_tokens], non_blocking=nb)
        self.positions[:num_tokens].copy_(self.positions_cpu[:num_tokens], non_blocking=nb)
        self.slot_mapping[:num_tokens].copy_(self.slot_mapping_cpu[:num_tokens], non_blocking=nb)
        self.query_start_loc[: num_reqs + 1].copy_(self.query_start_cpu[: num_reqs + 1], non_blocking=nb)
        self.seq_lens[:num_reqs].copy_(self.seq_lens_cpu[:num_reqs], non_blocking=nb)
        self.block_tables[:num_reqs].copy_(self.block_tables_cpu[:num_reqs], non_blocking=nb)
        self.logits_idx[:num_sample].copy_(self.logits_idx_cpu[:num_sample], non_blocking=nb)

    def pad_decode(self, num_reqs: int, padded: int) -> None:
        """Makes rows num_reqs..padded harmless for a decode graph of size ``padded``: no KV write,
        zero-length context, one query row each."""
        if padded == num_reqs:
            return
        self.input_ids_np[num_reqs:padded] = 0
        self.positions_np[num_reqs:padded] = 0
        self.slot_mapping_np[num_reqs:padded] = -1
        self.seq_lens_np[num_reqs:padded] = 0
        self.query_start_np[num_reqs + 1 : padded + 1] = np.arange(num_reqs + 1, padded + 1)
