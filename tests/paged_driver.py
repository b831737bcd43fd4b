"""Runs a model directly over the paged cache with hand-built step metadata (test helper)."""
from __future__ import annotations

import random

import torch

from worker.attention.backend import AttentionMetadata


class PagedDriver:
    """Feeds chunks of sequences through ``model`` with shuffled block tables; returns all logits."""

    def __init__(self, model, spec, num_blocks: int, block_size: int, dtype=torch.float32, device="cpu", seed=0):
        self.model, self.bs, self.device = model, block_size, device
        shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_dim)
        self.kv = [(torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device))
                   for _ in range(spec.num_layers)]  # garbage, not zeros: unwritten slots must never be read
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)
        self.tables: dict[str, list[int]] = {}

    def step(self, chunks: list[tuple[str, list[int], int]]) -> list[torch.Tensor]:
        """chunks: (sequence id, tokens to compute, position of the first one). Returns logits per chunk."""
        ids, pos, slots, starts, lens, tables = [], [], [], [0], [], []
        for sid, toks, start in chunks:
            end = start + len(toks)
            table = self.tables.setdefault(sid, [])
            while len(table) * self.bs < end:
                table.append(self.free.pop())
            for p in range(start, end):
                slots.append(table[p // self.bs] * self.bs + p % self.bs)
            ids += toks
            pos += list(range(start, end))
            starts.append(starts[-1] + len(toks))
            lens.append(end)
            tables.append(table)
        width = max(len(t) for t in tables)
        bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=self.device)
        meta = AttentionMetadata(
            num_tokens=len(ids), num_reqs=len(chunks),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor(lens, dtype=torch.int32, device=self.device),
            block_tables=bt, slot_mapping=torch.tensor(slots, dtype=torch.long, device=self.device),
            max_query_len=max(len(c[1]) for c in chunks), max_seq_len=max(lens),
            query_start_loc_cpu=starts, seq_lens_cpu=lens,
        )
        with torch.inference_mode():
            hidden = self.model(torch.tensor(ids, device=self.device), torch.tensor(pos, device=self.device), self.kv, meta)
            logits = self.model.compute_logits(hidden).float()
        return [logits[starts[i] : starts[i + 1]] for i in range(len(chunks))]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())
