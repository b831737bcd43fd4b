"""A request's state inside the engine: its tokens, progress, blocks' hashes and timings."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from worker.engine.block_hash import BlockHash, hash_block_tokens, salt_root
from worker.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return {3: "stop", 4: "length", 5: "abort"}.get(int(self))


@dataclass
class RequestTimings:
    arrival: float
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    inter_token: list[float] = field(default_factory=list)

    def on_token(self, now: float) -> None:
        if self.first_token is None:
            self.first_token = now
        else:
            self.inter_token.append(now - self.last_token)
        self.last_token = now

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival


class Request:
    """One sequence. Its token list grows as tokens are sampled; ``num_computed_tokens`` of them
    have their K/V in the cache. Full blocks of tokens are hashed as a chain for prefix caching."""

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        *,
        max_tokens: int,
        block_size: int,
        priority: int = 0,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
        wait_for: str | None = None,
        team: str | None = None,
        team_priority: int = 0,
        team_weight: float = 1.0,
    ) -> None:
        self.request_id = request_id
        self.sampling_params = sampling_params
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.max_tokens = max_tokens  # effective: capped by context and pool
        self.priority = priority  # orders requests within the team only
        self.team = team or ""  # the fair-share account ("": the shared default one)
        self.team_priority = team_priority  # the team's class, set by admins: a lower class is served first
        self.team_weight = team_weight  # the team's fair-share weight, set by admins
        self.queued_tokens = 0  # tokens counted in the waiting queue's total when it was queued
        self.cache_salt = cache_salt
        self.arrival_time = time.monotonic() if arrival_time is None else arrival_time
        self.wait_for = wait_for  # n > 1: siblings wait for the first choice's prefill to share its blocks
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0  # advanced when tokens are scheduled (their K/V is then in flight)
        self.num_placeholders = 0  # tokens being sampled by steps in flight, not yet known
        self.num_cached_tokens = -1  # prompt tokens found in the prefix cache at first scheduling
        self.num_registered_blocks = 0  # of its blocks now, how many the KV manager made findable
        self.num_preemptions = 0
        self.stop_reason: str | int | None = None
        # prompt logprobs gathered over the prefill chunks (None: not asked, or already sent)
        self.prompt_logprobs: list | None = [] if sampling_params.prompt_logprobs is not None else None
        self.timings = RequestTimings(arrival=self.arrival_time)
        self._block_size = block_size
        self._root = salt_root(cache_salt)
        self.block_hashes: list[BlockHash] = []
        self._extend_block_hashes()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens_with_placeholders(self) -> int:
        return len(self.token_ids) + self.num_placeholders

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        if len(self.token_ids) % self._block_size == 0:
            self._extend_block_hashes()

    def _extend_block_hashes(self) -> None:
        bs = self._block_size
        for i in range(len(self.block_hashes), len(self.token_ids) // bs):
            parent = self.block_hashes[-1] if self.block_hashes else self._root
            self.block_hashes.append(hash_block_tokens(parent, self.token_ids[i * bs : (i + 1) * bs]))

    def sort_key(self) -> tuple[int, float]:
        """Order within the team: lower priority value first, then earlier arrival."""
        return (self.priority, self.arrival_time)

    def running_key(self) -> tuple[int, int, float]:
        """Order of the running batch (who advances first when the budget is short)."""
        return (self.team_priority, self.priority, self.arrival_time)
