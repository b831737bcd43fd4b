"""KV blocks for a model whose layers form several groups (``kv_layout.py``): global groups keep a
request's every block, sliding-window groups give back the blocks that fell out of the window.

The interface is ``KVCacheManager``'s, with one list of block ids per group wherever that one
gives a list. Every group's list of a request has the same length: logical block i of the
context is at index i in each (a sliding group keeps the ids of blocks it gave back in place, never
read again, as ``KVCacheManager`` does for windowed models). All groups draw from one pool.

Prefix caching: block i of group g is cached under the block's hash and g. A hit of k blocks needs
every block of every global group, but only the blocks a sliding group's first query still reads
(those in its window); the ones before are not revived, their places hold a stand-in id.
"""
from __future__ import annotations

from collections.abc import Sequence

from worker.engine.block_pool import BlockPool, KVBlock
from worker.engine.kv_cache_manager import KVPoolAccounting, PrefixCacheStats
from worker.engine.request import Request

# Stands in for a sliding group's blocks before the window of a prefix hit: never taken, never
# freed, never read (every backend masks keys before the window). Its id is a real block's.
_SKIPPED = KVBlock(0)

GroupBlocks = list[list[KVBlock]]


class _RequestBlocks:
    __slots__ = ("groups", "released")

    def __init__(self, num_groups: int) -> None:
        self.groups: GroupBlocks = [[] for _ in range(num_groups)]
        self.released = [0] * num_groups  # leading blocks of each group given back (or skipped)


class HybridKVCacheManager(KVPoolAccounting):
    def __init__(
        self, num_blocks: int, block_size: int, windows: Sequence[int | None], enable_prefix_caching: bool = True
    ) -> None:
        if not windows:
            raise ValueError("a hybrid KV cache needs at least one group")
        if any(w is not None and w < 1 for w in windows):
            raise ValueError(f"sliding windows must be >= 1 or None, got {list(windows)}")
        if all(w is not None for w in windows):
            raise ValueError("a hybrid KV cache needs a global group (all-windowed models use KVCacheManager)")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.windows = tuple(windows)
        self.num_groups = len(windows)
        self._global = [g for g, w in enumerate(windows) if w is None]
        self._sliding = [g for g, w in enumerate(windows) if w is not None]
        self._suffix = [bytes([g]) for g in range(self.num_groups)]
        # sliding groups of one window give blocks back in lockstep: decided once per window
        by_window: dict[int, list[int]] = {}
        for g in self._sliding:
            by_window.setdefault(windows[g], []).append(g)
        self._windows = [(w, gs) for w, gs in by_window.items()]
        self._nothing = tuple([] for _ in range(self.num_groups))  # read-only: no block added
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.reqs: dict[str, _RequestBlocks] = {}
        self.num_allocated_blocks = 0  # held by requests (a shared block counts once per holder)
        self.num_global_blocks = 0  # of which in global groups
        self.prefix_stats = PrefixCacheStats()

    # ---- sizes ---------------------------------------------------------------------------
    def num_allocated_slots(self) -> int:
        """Token slots held, counted as one global group's (what a token costs at the least)."""
        return self.num_global_blocks * self.block_size // len(self._global)

    def num_held_blocks(self, request_id: str) -> int:
        """Blocks the request holds a reference on, over all groups (given-back ones excluded)."""
        st = self.reqs.get(request_id)
        return 0 if st is None else sum(len(b) - r for b, r in zip(st.groups, st.released))

    def get_block_ids(self, request_id: str) -> tuple[list[int], ...]:
        """The request's block table of each group (given-back blocks keep their place)."""
        st = self.reqs.get(request_id)
        if st is None:
            return tuple([] for _ in range(self.num_groups))
        return tuple([b.block_id for b in blocks] for blocks in st.groups)

    def capacity_tokens(self, max_step_tokens: int) -> int:
        """The longest request the whole pool can hold: every group at full length, or the global
        groups at full length beside each sliding group's most (its window and one step's tokens)."""
        bs, total = self.block_size, self.pool.num_blocks
        every_group = total // self.num_groups * bs
        windows = sum((self.windows[g] - 1 + max_step_tokens) // bs + 2 for g in self._sliding)
        global_only = (total - windows) // len(self._global) * bs if total > windows else 0
        return max(every_group, global_only)

    def blocks_to_hold(self, request: Request, num_tokens: int, num_cached_tokens: int = 0) -> int:
        """Blocks the request would still take from the pool, over all groups, to hold its first
        ``num_tokens`` tokens besides what it holds and a prefix-cache hit of ``num_cached_tokens``; a
        sliding group never holds more than its window's blocks and one."""
        bs = self.block_size
        st = self.reqs.get(request.request_id)
        held = (len(st.groups[0]) if st else 0) + num_cached_tokens // bs
        need = -(-num_tokens // bs) - held
        if need <= 0:
            return 0
        total = need * len(self._global)
        for g in self._sliding:
            held_g = len(st.groups[g]) - st.released[g] if st else 0
            total += max(0, min(need, -(-self.windows[g] // bs) + 1 - held_g))
        return total

    def _first_needed(self, group: int, first_query: int) -> int:
        """The first block the query at ``first_query`` reads in a sliding group."""
        return max(0, first_query - self.windows[group] + 1) // self.block_size

    # ---- prefix cache --------------------------------------------------------------------
    def get_computed_blocks(self, request: Request) -> tuple[GroupBlocks | None, int]:
        """The longest cached prefix usable by every group (see the module's docstring), and how
        many tokens it covers; at least one token is always left to compute."""
        if not self.enable_prefix_caching:
            return None, 0
        bs = self.block_size
        hashes, tokens = request.block_hashes, request.token_ids
        max_blocks = min((request.num_tokens - 1) // bs, len(hashes))
        found: dict[tuple[int, int], KVBlock | None] = {}

        def lookup(g: int, i: int) -> KVBlock | None:
            key = (g, i)
            if key not in found:
                found[key] = self.pool.get_cached_block(hashes[i] + self._suffix[g], tokens[i * bs : (i + 1) * bs])
            return found[key]

        k = 0
        while k < max_blocks and all(lookup(g, k) is not None for g in self._global):
            k += 1
        # a sliding group needs the blocks of its window before position k * bs, unbroken
        settled = False
        while k > 0 and not settled:
            settled = True
            for g in self._sliding:
                for i in range(k - 1, self._first_needed(g, k * bs) - 1, -1):
                    if lookup(g, i) is None:
                        k, settled = i, False
                        break
                if not settled:
                    break
        if k == 0:
            return None, 0
        hits: GroupBlocks = []
        for g, w in enumerate(self.windows):
            skip = 0 if w is None else self._first_needed(g, k * bs)
            hits.append([_SKIPPED] * skip + [found[(g, i)] for i in range(skip, k)])
        return hits, k * bs

    def cache_blocks(self, request: Request, num_tokens: int) -> None:
        """Makes the request's full, computed blocks findable (``KVCacheManager.cache_blocks``)."""
        bs = self.block_size
        num_full = min(num_tokens // bs, len(request.block_hashes))
        start = request.num_registered_blocks
        if num_full <= start or not self.enable_prefix_caching:
            return
        st = self.reqs[request.request_id]
        for g, blocks in enumerate(st.groups):
            suffix = self._suffix[g]
            for i in range(max(start, st.released[g]), num_full):  # given-back blocks may be another's now
                block = blocks[i]
                if block.block_hash is None:
                    self.pool.cache_block(block, request.block_hashes[i] + suffix,
                                          request.token_ids[i * bs : (i + 1) * bs])
        request.num_registered_blocks = num_full

    # ---- allocation ----------------------------------------------------------------------
    def allocate_slots(
        self, request: Request, num_new_tokens: int, new_computed_blocks: GroupBlocks | None = None
    ) -> tuple[list[int], ...] | None:
        """Ensures every group has blocks for ``num_new_tokens`` more tokens after the computed ones
        (plus the prefix hit given). Returns each group's newly added block ids, or None if the
        pool is short (nothing changes then, except blocks given back that no query reads)."""
        st = self.reqs.get(request.request_id)
        if st is None:
            st = self.reqs[request.request_id] = _RequestBlocks(self.num_groups)
        num_hit = len(new_computed_blocks[0]) if new_computed_blocks else 0
        num_computed = request.num_computed_tokens + num_hit * self.block_size
        # blocks out of every window of the next query are given back first: they make room
        self._release_out_of_window(st, num_computed)
        held = len(st.groups[0])
        need = -(-(num_computed + num_new_tokens) // self.block_size) - held - num_hit
        if need <= 0 and not num_hit:
            return self._nothing
        need = max(need, 0)
        revived = 0
        if num_hit:
            revived = sum(1 for blocks in new_computed_blocks for b in blocks if b is not _SKIPPED and b.ref_cnt == 0)
        if need * self.num_groups + revived > self.pool.num_free_blocks:
            return None
        if num_hit:  # every group's hits leave the free list before any new block is taken from it
            for hits in new_computed_blocks:
                self.pool.touch([b for b in hits if b is not _SKIPPED])
        added: list[list[int]] = []
        for g, blocks in enumerate(st.groups):
            taken = []
            if num_hit:
                hits = new_computed_blocks[g]
                st.released[g] += sum(1 for b in hits if b is _SKIPPED)  # skipped places count as given back
                taken.extend(hits)
            taken.extend(self.pool.get_new_blocks(need) if need else [])
            blocks.extend(taken)
            held_now = sum(1 for b in taken if b is not _SKIPPED)
            self.num_allocated_blocks += held_now
            if g in self._global:
                self.num_global_blocks += held_now
            added.append([b.block_id for b in taken])
        return tuple(added)

    def _release_out_of_window(self, st: _RequestBlocks, first_query: int) -> None:
        held = len(st.groups[0])
        for window, groups in self._windows:
            done = min(max(0, first_query - window + 1) // self.block_size, held)
            start = st.released[groups[0]]
            if done <= start:  # the usual decode step: the window has not passed a block boundary
                continue
            for g in groups:
                st.released[g] = done
                self.pool.free_blocks(st.groups[g][start:done])
            self.num_allocated_blocks -= (done - start) * len(groups)

    def free(self, request: Request) -> None:
        """Releases every group's blocks, tail first: shared prefixes stay cached longest."""
        st = self.reqs.pop(request.request_id, None)
        request.num_registered_blocks = 0
        if st is None:
            return
        for g, (blocks, released) in enumerate(zip(st.groups, st.released)):
            self.num_allocated_blocks -= len(blocks) - released
            if g in self._global:
                self.num_global_blocks -= len(blocks) - released
            self.pool.free_blocks(list(reversed(blocks[released:])))
