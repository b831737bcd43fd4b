"""Admission control: a worker's waiting queue is bounded, in requests and in prompt tokens, and each team
may hold only its weighted share of it while other teams wait. Decided on the event loop before any
tokenization, from an upper bound of the prompt's tokens (its UTF-8 bytes), then corrected to the
exact count once tokenized.

A request counts as waiting from admission until its first output (tokenization, the engine's waiting
queue and its prefill included) or its end.

- ``worker_overloaded``: the queue is full. Another worker of the model may take the request.
- ``team_share_exceeded``: other teams are waiting and the caller's team holds its share of the queue
  (its weight's fraction of the queue among the teams waiting). Backing off is the caller's business.
A team alone may fill the whole queue (work-conserving). A team under its share is admitted even when
others filled the queue before it arrived, up to ``OVERFLOW`` times the bounds, so a flood cannot lock
out a team that has just begun to send.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from worker.errors import WardError

OVERFLOW = 2  # the hard bound, as a multiple of the configured queue bounds
DEFAULT_RETRY_AFTER_MS = 1000


class AdmissionRefused(WardError):
    """The worker will not queue the request now; ``retry_after_ms`` says when a retry may succeed."""

    def __init__(self, message: str, code: str, retry_after_ms: int = DEFAULT_RETRY_AFTER_MS) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True)
class AdmissionLimits:
    max_waiting_requests: int
    max_waiting_tokens: int

    def __post_init__(self) -> None:
        if self.max_waiting_requests < 1 or self.max_waiting_tokens < 1:
            raise ValueError("admission bounds must be >= 1")


@dataclass
class _TeamQueue:
    weight: float = 1.0
    requests: int = 0
    tokens: int = 0


@dataclass
class Ticket:
    """One admitted request's place in the queue, released once (first output, end, or failure)."""

    admission: "Admission"
    team: str
    tokens: int
    released: bool = field(default=False)

    def set_tokens(self, exact: int) -> None:
        """Replaces the estimate with the exact prompt token count (after tokenization)."""
        if not self.released:
            self.admission._add(self.team, 0, exact - self.tokens)
            self.tokens = exact

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._add(self.team, -1, -self.tokens)


class Admission:
    """The waiting queue's per-team counts (event-loop only: no locks)."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.teams: dict[str, _TeamQueue] = {}
        self.requests = 0
        self.tokens = 0
        self.refusals: dict[str, int] = {"worker_overloaded": 0, "team_share_exceeded": 0}

    @property
    def num_refusals(self) -> int:
        return sum(self.refusals.values())

    def admit(self, team: str, weight: float, tokens: int) -> Ticket:
        """A place in the queue for a request of ``team`` of (at most) ``tokens`` prompt tokens, or
        AdmissionRefused."""
        lim = self.limits
        queue = self.teams.get(team)
        if queue is None:
            queue = self.teams[team] = _TeamQueue()
        queue.weight = weight
        others = [q for name, q in self.teams.items() if name != team and q.requests > 0]
        if not others:  # alone (or the others are not waiting): the whole queue
            if self.requests + 1 > lim.max_waiting_requests or (
                    self.requests and self.tokens + tokens > lim.max_waiting_tokens):
                self._refuse("worker_overloaded", "this worker's queue is full")
        else:
            share = weight / (weight + sum(q.weight for q in others))
            cap_requests = max(1, math.floor(lim.max_waiting_requests * share))
            cap_tokens = lim.max_waiting_tokens * share
            if queue.requests + 1 > cap_requests or (queue.requests and queue.tokens + tokens > cap_tokens):
                self._refuse("team_share_exceeded", "your team holds its share of this worker's queue")
            if self.requests + 1 > OVERFLOW * lim.max_waiting_requests or (
                    self.requests and self.tokens + tokens > OVERFLOW * lim.max_waiting_tokens):
                self._refuse("worker_overloaded", "this worker's queue is full")
        self._add(team, 1, tokens)
        return Ticket(self, team, tokens)

    def _refuse(self, code: str, message: str) -> None:
        self.refusals[code] += 1
        raise AdmissionRefused(message, code)

    def _add(self, team: str, requests: int, tokens: int) -> None:
        queue = self.teams[team]
        queue.requests += requests
        queue.tokens += tokens
        self.requests += requests
        self.tokens += tokens
        if queue.requests == 0 and team:  # forget idle teams (the default account stays)
            del self.teams[team]
