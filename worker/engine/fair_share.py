"""Weighted fair share between teams: the Virtual Token Counter (Sheng et al., OSDI 2024, "Fairness in
Serving Large Language Models"), with admin-set priority classes. Plain Python, no torch.

Each team has an account: a weight (its share, set by admins), a priority class (a lower class is
always served first) and a virtual counter, its served tokens divided by its weight. Prefill tokens
count ``PREFILL_COST`` each and decode tokens ``DECODE_COST`` (the paper's w_p = 1, w_q = 2: a decode
token costs a whole pass over the weights for one token). The scheduler admits waiting requests from
the most urgent class, and within it from the team with the least counter; when it must preempt, it
takes the victim from the least urgent class, and within it from the team furthest above its share.
A team with nothing running whose counter is below another team's may take one of that team's seats
(preemption by recompute, cheap while the victim's blocks stay in the prefix cache): a flood holding
every seat cannot make a lone request wait for the flood's requests to end. Two teams that both run
never preempt each other for share, and a team is never preempted down to nothing running by this rule
(so it cannot turn starved and preempt back); the admission order evens them out as seats free.

Work-conserving: a team alone is served at the engine's full speed, whatever its weight. No banking:
a team that comes back after an idle spell has its counter lifted to the least counter of the teams
still active, so past idleness buys no burst at the others' expense. No debt either: once the engine has
idled (nothing waiting or running), returning teams start level, so a team that had the engine to
itself earlier is not made to wait while the others catch up.

A request's own ``priority`` orders requests only within its team; it never moves a request ahead of
another team's, and never makes it preempt another team's request.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from worker.engine.request import Request

PREFILL_COST = 1.0
DECODE_COST = 2.0
DEFAULT_TEAM = ""  # requests that name no team share this account


def check_policy(priority: int, weight: float) -> None:
    """Raises ValueError for a team policy the scheduler cannot honour."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"a team's priority class must be an integer, got {priority!r}")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"a team's weight must be a finite number > 0, got {weight!r}")


class TeamAccount:
    """One team's share of the engine and its requests inside it."""

    __slots__ = ("name", "priority", "weight", "counter", "served_tokens", "waiting", "num_running",
                 "waiting_tokens")

    def __init__(self, name: str, priority: int = 0, weight: float = 1.0) -> None:
        self.name = name
        self.priority = priority
        self.weight = weight
        self.counter = 0.0  # weighted tokens served / weight: the virtual token counter
        self.served_tokens = 0.0  # weighted tokens served since start
        self.waiting: list[Request] = []  # by (request priority, arrival)
        self.num_running = 0
        self.waiting_tokens = 0  # tokens of the waiting requests (prompt and any output so far)

    @property
    def active(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    def __repr__(self) -> str:
        return (f"TeamAccount({self.name!r}, class={self.priority}, weight={self.weight}, counter={self.counter:.1f}, "
                f"waiting={len(self.waiting)}, running={self.num_running})")


class FairShare:
    """The accounts of every team seen, and the two choices the scheduler asks of them."""

    def __init__(self) -> None:
        self.teams: dict[str, TeamAccount] = {}
        self.num_waiting = 0

    # ---- accounts --------------------------------------------------------------------------
    def account_for(self, request: Request) -> TeamAccount:
        """The request's team account, created on first sight; the request's policy becomes the team's."""
        account = self.teams.get(request.team)
        if account is None:
            account = self.teams[request.team] = TeamAccount(request.team)
        account.priority, account.weight = request.team_priority, request.team_weight
        return account

    def _lift(self, account: TeamAccount) -> None:
        """A team becoming active starts no lower than the least counter of the active teams; into an idle
        engine, level with the highest counter of all, so that neither credit nor debt outlives a spell in
        which nothing waited (a team that had the engine to itself is not made to wait for it afterwards)."""
        floor = min((t.counter for t in self.teams.values() if t.active and t is not account), default=None)
        if floor is None:
            floor = max(t.counter for t in self.teams.values())
        if account.counter < floor:
            account.counter = floor

    @staticmethod
    def cost(request: Request, num_tokens: int) -> float:
        """The weighted cost of ``num_tokens`` scheduled for ``request`` from its ``num_computed_tokens`` on."""
        prefill = request.num_prompt_tokens - request.num_computed_tokens
        if prefill <= 0:
            return num_tokens * DECODE_COST
        prefill = min(prefill, num_tokens)
        return prefill * PREFILL_COST + (num_tokens - prefill) * DECODE_COST

    def charge(self, request: Request, num_tokens: int) -> float:
        """Counts ``num_tokens`` scheduled for ``request``; returns the cost."""
        cost = self.cost(request, num_tokens)
        self.add(request.team, cost)
        return cost

    def add(self, team: str, cost: float) -> None:
        """Counts ``cost`` (negative: a refund of tokens taken back in the same step) to ``team``."""
        account = self.teams[team]
        account.served_tokens += cost
        account.counter += cost / account.weight

    # ---- the waiting queues ----------------------------------------------------------------
    def push_waiting(self, request: Request) -> None:
        account = self.account_for(request)
        if not account.active:
            self._lift(account)
        bisect.insort(account.waiting, request, key=Request.sort_key)
        account.waiting_tokens += request.num_tokens
        request.queued_tokens = request.num_tokens
        self.num_waiting += 1

    def remove_waiting(self, request: Request) -> None:
        account = self.teams[request.team]
        account.waiting.remove(request)
        account.waiting_tokens -= request.queued_tokens
        self.num_waiting -= 1

    def waiting_requests(self) -> list[Request]:
        return [r for t in self.teams.values() for r in t.waiting]

    def next_team(self, exclude: set[str]) -> TeamAccount | None:
        """The team to admit from next: most urgent class, then least counter, among teams with waiting
        requests not in ``exclude``. The caller charges what it admits, so the choice can alternate."""
        best = None
        for t in self.teams.values():
            if t.waiting and t.name not in exclude and (
                    best is None or (t.priority, t.counter) < (best.priority, best.counter)):
                best = t
        return best

    # ---- running requests ------------------------------------------------------------------
    def on_running(self, request: Request) -> None:
        self.teams[request.team].num_running += 1

    def on_stopped_running(self, request: Request) -> None:
        self.teams[request.team].num_running -= 1

    def pick_victim(self, running: Iterable[Request]) -> Request | None:
        """The running request to preempt: least urgent class, then the team furthest above its share
        (largest counter), then within the team the least urgent, latest request."""
        victim, best = None, None
        for r in running:
            t = self.teams[r.team]
            key = (t.priority, t.counter, r.priority, r.arrival_time)
            if best is None or key > best:
                victim, best = r, key
        return victim

    def may_preempt(self, victim: Request, for_request: Request) -> bool:
        """Whether a waiting request may take a running one's place (its seat or its blocks): within a
        team by the requests' own priorities; across teams for a more urgent class (admins' policy,
        never a client's), or for a starved team: one with nothing running, below the share of the
        victim's team, which runs more than one request (a flood holding every seat must not make another
        team wait for its requests to end)."""
        if victim.team == for_request.team:
            return victim.sort_key() > for_request.sort_key()
        theirs, ours = self.teams[victim.team], self.teams[for_request.team]
        if theirs.priority != ours.priority:
            return theirs.priority > ours.priority
        # The victim's team keeps a request running, so it can never be starved in turn: no ping-pong.
        return ours.num_running == 0 and theirs.num_running > 1 and theirs.counter > ours.counter

    def may_take_seat(self, victim: Request, for_request: Request) -> bool:
        """Whether a waiting request may take a running one's seat when all are taken: only across
        teams (within a team, requests wait for seats in their own order, as vLLM's do)."""
        return victim.team != for_request.team and self.may_preempt(victim, for_request)

    def seat_victim(self, for_request: Request, running: Iterable[Request]) -> Request | None:
        """The running request whose seat ``for_request`` takes when every seat is taken, or None."""
        ours = self.teams[for_request.team]
        if ours.num_running and not any(t.num_running and t.priority > ours.priority for t in self.teams.values()):
            return None  # the usual case under a flood, decided per team, not per running request
        return self.pick_victim(r for r in running if self.may_take_seat(r, for_request))
