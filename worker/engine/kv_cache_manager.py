"""Maps requests to KV blocks: prefix-cache lookup, on-demand allocation, freeing.

Methods answer "no" cheaply (``allocate_slots`` returns None) and leave the decision, such as
preempting another request, to the scheduler.

With ``sliding_window`` (a model whose every layer attends to a window, such as Mistral v0.1 or
Phi-3-mini), a request's leading blocks that fall out of the window of its next query are given
back at once: no later step reads them (queries only move forward; a preempted request frees all
and starts again). They keep their place in the request's block list, so logical block i stays at
index i and the runner's block table keeps its (now stale) ids, which every backend masks out.
Released blocks that were registered stay findable in the prefix cache until reused, as freed
blocks always do; they hold K/V their own steps wrote, and steps run in order on the device, so
one reused by another request is only written after every earlier step has read it.
"""
from __future__ import annotations

from dataclasses import dataclass

from worker.engine.block_pool import BlockPool, KVBlock
from worker.engine.request import Request


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of which found in the cache

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


class KVPoolAccounting:
    """What every KV cache manager reports about its pool and prefix cache (``pool`` and
    ``prefix_stats`` are set by the manager)."""

    pool: BlockPool
    prefix_stats: PrefixCacheStats

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def usage(self) -> float:
        return self.pool.num_used_blocks / self.pool.num_blocks

    def record_prefix_lookup(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Counts one admitted request's lookup (failed admissions are retried and not counted)."""
        self.prefix_stats.queries += num_tokens
        self.prefix_stats.hits += num_hit_tokens


class KVCacheManager(KVPoolAccounting):
    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, sliding_window: int | None = None
    ) -> None:
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.sliding_window = sliding_window
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self.num_released: dict[str, int] = {}  # leading blocks of a request already given back
        self.num_allocated_blocks = 0  # held by requests (a shared block counts once per holder)
        self.prefix_stats = PrefixCacheStats()

    def capacity_tokens(self, max_step_tokens: int) -> int:
        """The longest request the whole pool can hold (one table: a block of tokens per block)."""
        return self.pool.num_blocks * self.block_size

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_to_hold(self, request: Request, num_tokens: int, num_cached_tokens: int = 0) -> int:
        """Blocks the request would still take from the pool to hold its first ``num_tokens`` tokens,
        besides what it holds and the ``num_cached_tokens`` a prefix-cache hit gives it (0 if none)."""
        held = len(self.req_blocks.get(request.request_id, ())) + num_cached_tokens // self.block_size
        need = self.blocks_needed(num_tokens) - held
        if self.sliding_window is not None:  # blocks that fall out of the window are given back
            need = min(need, self.blocks_needed(self.sliding_window) + 1 - self.num_held_blocks(request.request_id))
        return max(0, need)

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """The longest cached prefix of the request's full blocks, and how many tokens it covers.

        At least one token is always left to compute, so the step produces logits to sample from.
        """
        if not self.enable_prefix_caching:
            return [], 0
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits: list[KVBlock] = []
        bs = self.block_size
        for i in range(max_blocks):
            block = self.pool.get_cached_block(request.block_hashes[i], request.token_ids[i * bs : (i + 1) * bs])
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * bs

    def allocate_slots(
        self, request: Request, num_new_tokens: int, new_computed_blocks: list[KVBlock] | None = None
    ) -> list[int] | None:
        """Ensures blocks for ``num_new_tokens`` more tokens after the computed ones (plus any
        prefix-cache hits given). Returns the ids of newly added blocks, or None if the pool is short."""
        blocks = self.req_blocks.get(request.request_id)
        if blocks is None:
            blocks = self.req_blocks[request.request_id] = []
        if not new_computed_blocks:
            # the common decode step: the last block usually has room
            total_tokens = request.num_computed_tokens + num_new_tokens
            need = -(-total_tokens // self.block_size) - len(blocks)
            if need <= 0:
                if self.sliding_window is not None:
                    self._release_out_of_window(request.request_id, blocks, request.num_computed_tokens)
                return []
            new_computed_blocks = []
        num_computed = request.num_computed_tokens + len(new_computed_blocks) * self.block_size
        total_tokens = num_computed + num_new_tokens
        need = self.blocks_needed(total_tokens) - len(blocks) - len(new_computed_blocks)
        # Hits that sit in the free list must come out of it too.
        revived = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if need + revived > self.pool.num_free_blocks:
            return None
        if new_computed_blocks:
            self.pool.touch(new_computed_blocks)
        new_blocks = self.pool.get_new_blocks(need) if need > 0 else []
        blocks.extend(new_computed_blocks)
        blocks.extend(new_blocks)
        self.num_allocated_blocks += len(new_computed_blocks) + len(new_blocks)
        if self.sliding_window is not None:
            self._release_out_of_window(request.request_id, blocks, num_computed)
        return [b.block_id for b in new_computed_blocks + new_blocks]

    def _release_out_of_window(self, request_id: str, blocks: list[KVBlock], first_query: int) -> None:
        """Gives back the leading blocks whose every position is before the window of the query at
        ``first_query`` (keys at positions <= first_query - window are never read again)."""
        done = max(0, first_query - self.sliding_window + 1) // self.block_size
        start = self.num_released.get(request_id, 0)
        if done <= start:
            return
        self.num_released[request_id] = done
        self.num_allocated_blocks -= done - start
        self.pool.free_blocks(blocks[start:done])

    def cache_blocks(self, request: Request, num_tokens: int) -> None:
        """Makes the request's full blocks among its first ``num_tokens`` findable in the prefix cache.

        Call it only for tokens of a step that is certain to run (the scheduler does, once a step's
        plan is final): a block is findable only once a launched step writes its K/V. Steps run in
        order on the device, so a later step that hits the block reads what the earlier one wrote.
        Allocation alone never registers a block: tokens scheduled and then taken back in the same
        step (a preemption) must not leave a block findable that nothing will write."""
        bs = self.block_size
        num_full = min(num_tokens // bs, len(request.block_hashes))
        start = request.num_registered_blocks
        if num_full <= start or not self.enable_prefix_caching:
            return  # the common decode step: no block completed since the last call
        blocks = self.req_blocks[request.request_id]
        # a released block may already belong to another request: never register it
        for i in range(max(start, self.num_released.get(request.request_id, 0)), num_full):
            block = blocks[i]
            if block.block_hash is None:
                self.pool.cache_block(block, request.block_hashes[i], request.token_ids[i * bs : (i + 1) * bs])
        request.num_registered_blocks = num_full

    def free(self, request: Request) -> None:
        """Releases the request's blocks, tail first: shared prefixes stay cached longest."""
        blocks = self.req_blocks.pop(request.request_id, [])
        released = self.num_released.pop(request.request_id, 0)
        request.num_registered_blocks = 0
        self.num_allocated_blocks -= len(blocks) - released
        self.pool.free_blocks(list(reversed(blocks[released:])))

    def num_held_blocks(self, request_id: str) -> int:
        """Blocks the request holds a reference on (released ones excluded)."""
        return len(self.req_blocks.get(request_id, [])) - self.num_released.get(request_id, 0)

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table; ids of released blocks stay in place (never read again)."""
        return [b.block_id for b in self.req_blocks.get(request_id, [])]

    def num_allocated_slots(self) -> int:
        return self.num_allocated_blocks * self.block_size
