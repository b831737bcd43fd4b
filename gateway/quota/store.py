"""The contract every quota store keeps (Redis for many gateways, in-process for one).

Semantics, identical in both stores (the tests run the same cases against each):

- ``admit`` checks every limit of every scope of a request and, only when all pass, records the
  admission everywhere in one atomic step; a refusal consumes nothing from any limit.
- Rates use a sliding-window log over the last 60 s: an entry admitted at time t counts while
  ``now - t < 60 s``. Within ANY 60 s window, admitted requests never exceed ``requests_per_minute``
  and admitted tokens (the reservation, lowered to the true usage on settle) never exceed
  ``tokens_per_minute``, provided a request never uses more than it reserved.
- A reservation is live from admission until it is settled or its TTL passes. ``max_concurrent``
  counts live reservations; day and month budgets count settled tokens of the UTC calendar period
  plus the tokens of live reservations.
- ``settle`` is idempotent: the second and later calls for one reservation return False and change nothing.
- ``extend`` raises a live reservation to a new total, checked against every token limit exactly as
  ``admit`` would check that total now beside everything else in flight; a refusal changes nothing.
  The request's entries for requests_per_minute and max_concurrent stay as admitted (it holds its
  slot); its tokens_per_minute entry moves to the time of the extension, as if admitted then. It never
  lowers a reservation, so repeating an extension changes nothing and answers the same.
- Windows and budgets are tracked only for the kinds a scope limits at admission; settled tokens are
  always added to every scope's day and month counters and to the team's usage record.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from gateway.quota.headers import WindowState
from gateway.quota.limits import LimitKind, QuotaLimits, Scope, ScopeLimits

# Refusals that only wait on in-flight requests suggest this delay: their end is not known in advance.
IN_FLIGHT_RETRY_S = 1.0
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class AdmitRequest:
    team: str
    reservation_id: str  # lowercase hex, unique per request
    reserve_tokens: int
    model: str | None
    scopes: tuple[ScopeLimits, ...]  # the team scope first, then key and model scopes when present
    ttl_s: float  # how long the reservation stays live if never settled


@dataclass(frozen=True)
class Rejection:
    kind: LimitKind
    scope: Scope
    limit: int
    used: int
    retry_after_s: float | None  # None: the request can never fit


@dataclass(frozen=True)
class AdmitResult:
    rejection: Rejection | None
    requests: WindowState | None  # the tightest requests_per_minute in play, for headers
    tokens: WindowState | None  # the tightest tokens_per_minute in play
    day: str  # UTC period of the admission, "YYYYMMDD" and "YYYYMM"
    month: str

    @property
    def admitted(self) -> bool:
        return self.rejection is None


@dataclass(frozen=True)
class ExtendRequest:
    team: str
    reservation_id: str
    reserve_tokens: int  # the total the reservation is to hold, not the increase
    scopes: tuple[ScopeLimits, ...]  # the limits the reservation was admitted under


class ExtendStatus(str, Enum):
    EXTENDED = "extended"  # the reservation now holds reserve_tokens (or already did: a repeat)
    REFUSED = "refused"  # a token limit refused; nothing changed
    UNKNOWN = "unknown"  # no live reservation by that id (settled, released, expired or never admitted)


@dataclass(frozen=True)
class ExtendResult:
    status: ExtendStatus
    rejection: Rejection | None  # set when REFUSED
    requests: WindowState | None  # as in AdmitResult; None for UNKNOWN
    tokens: WindowState | None


class SettleMode(str, Enum):
    SETTLE = "settle"  # end of a request: lower the reservation to the true usage and record it
    RELEASE = "release"  # the request never ran: give everything back, record no usage
    WITHDRAW = "withdraw"  # refused after its admission (an extension): as RELEASE, and out of the rate windows
    USAGE_ONLY = "usage"  # record usage admitted elsewhere (e.g. by the local limiter during an outage)


@dataclass(frozen=True)
class Settlement:
    team: str
    reservation_id: str
    scopes: tuple[Scope, ...]
    day: str
    month: str
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    mode: SettleMode = SettleMode.SETTLE


@dataclass(frozen=True)
class UsageRecord:
    """Settled usage of one team on one UTC day for one model (None: requests that named no model)."""

    day: dt.date
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int


OverrideKey = tuple[str, Scope]  # (team, scope)


class QuotaStore(Protocol):
    """Where counters, reservations, usage and admin-set limits live."""

    async def admit(self, request: AdmitRequest) -> AdmitResult:
        """Check and, if every limit allows, record one admission. Raises QuotaStoreError if unreachable."""
        ...

    async def extend(self, request: ExtendRequest) -> ExtendResult:
        """Raise a live reservation to ``request.reserve_tokens`` if every token limit allows it (see
        the module's docstring). Raises QuotaStoreError if unreachable."""
        ...

    async def settle(self, settlement: Settlement) -> bool:
        """Apply a settlement; False when the reservation is unknown (already settled or long expired)."""
        ...

    async def usage(self, team: str, first_day: dt.date, last_day: dt.date) -> list[UsageRecord]:
        """Settled usage per day and model, both days included."""
        ...

    async def get_overrides(self) -> dict[OverrideKey, QuotaLimits]:
        """Every limit set through the admin API, for all teams."""
        ...

    async def set_override(self, team: str, scope: Scope, limits: QuotaLimits | None) -> None:
        """Set (or with None, remove) the admin-set limits of one scope."""
        ...

    async def aclose(self) -> None: ...
