"""How a model's layers share the paged KV pool: one group of layers per block table.

A model whose layers all attend the same way (every layer global, or every layer windowed) has one
group: a KV block holds one block of tokens for every layer, and one block table per request
serves them all (blocks out of a windowed model's window are given back as the request runs).

A model that mixes global and sliding-window layers (Gemma 2: 1 to 1; Gemma 3 and MedGemma: 5
local to 1 global) would hold every token of a long context in every layer's cache that way,
though its sliding-window layers never read past the window. Here its layers are split into
groups of equal size, each group of one attention kind, and each group has its own block table:
a global group's table grows with the context, a sliding group's keeps only the window's blocks
and gives the rest back. Equal sizes let every group draw from one pool: a physical block holds
``layers_per_block`` layers' K/V, and layer slot j of a block belongs to the j-th layer of
whichever group holds the block. The groups are as large as the smallest attention kind's layer
count; the last group of a kind may leave slots empty (a few blocks of a window's worth).

The split is only worth it when a window is shorter than the longest context: a window that
covers ``max_model_len`` is global in effect, and the model keeps one group.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KVGroup:
    window: int | None  # None: global attention (the block table keeps every block)
    layers: tuple[int, ...]  # model layers, in the order of their slots in a block


@dataclass(frozen=True)
class KVLayout:
    groups: tuple[KVGroup, ...]
    layers_per_block: int  # layer slots of one physical KV block
    layer_group: tuple[int, ...] = field(init=False)  # per model layer: its group
    layer_slot: tuple[int, ...] = field(init=False)  # per model layer: its slot in a block

    def __post_init__(self) -> None:
        n = sum(len(g.layers) for g in self.groups)
        group, slot = [0] * n, [0] * n
        for g, kv_group in enumerate(self.groups):
            for j, layer in enumerate(kv_group.layers):
                group[layer], slot[layer] = g, j
        object.__setattr__(self, "layer_group", tuple(group))
        object.__setattr__(self, "layer_slot", tuple(slot))

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def windows(self) -> tuple[int | None, ...]:
        return tuple(g.window for g in self.groups)

    @property
    def num_global_groups(self) -> int:
        return sum(1 for g in self.groups if g.window is None)


def plan_kv_layout(windows: list[int | None], max_model_len: int) -> KVLayout:
    """The grouping of layers with these per-layer sliding windows (None: global attention)."""
    if not windows:
        raise ValueError("a model needs at least one layer")
    effective = [None if w is None or w >= max_model_len else w for w in windows]
    layers = tuple(range(len(windows)))
    if all(w is None for w in effective):
        return KVLayout((KVGroup(None, layers),), len(layers))
    if all(w is not None for w in effective):
        # every layer windowed: one table, trimmed to the widest window
        return KVLayout((KVGroup(max(effective), layers),), len(layers))
    kinds: dict[int | None, list[int]] = {}
    for layer, w in enumerate(effective):
        kinds.setdefault(w, []).append(layer)
    size = min(len(ls) for ls in kinds.values())
    groups = []
    for w in sorted(kinds, key=lambda w: (w is not None, w or 0)):  # global groups first
        ls = kinds[w]
        groups.extend(KVGroup(w, tuple(ls[i : i + size])) for i in range(0, len(ls), size))
    return KVLayout(tuple(groups), size)
