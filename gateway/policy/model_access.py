"""Which models a team may use: the approval status of each model and the team's allow-list.

The rule, as a hospital's model approval board runs it:

- ``retired``: refused to every team (the board withdrew it); listing it changes nothing.
- ``pilot``: only teams whose allow-list names it (the board admitted it for a trial with those teams).
- ``approved``: every team without an allow-list, and teams whose allow-list names it.
- no status recorded ("unreviewed"): as ``approved``. The operator who started a worker for the model
  decided to serve it; the board narrows that decision (record ``pilot`` before deploying a model that
  is on trial). So ``ward up``'s default team can use its default models out of the box.

A team's allow-list, when it has one, is exact: the team may use the listed models (unless retired) and
nothing else, not even approved ones it does not list; an empty list allows none. A team without one
may use every approved (or unreviewed) model.
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum


class ModelStatus(str, Enum):
    APPROVED = "approved"
    PILOT = "pilot"
    RETIRED = "retired"


UNREVIEWED = "unreviewed"  # how a model with no recorded status is shown


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # approved, listed, unreviewed, retired, pilot_not_listed, not_listed


# The only answers there are, made once (decide runs on every request).
RETIRED = Decision(False, "retired")
LISTED = Decision(True, "listed")
NOT_LISTED = Decision(False, "not_listed")
PILOT_NOT_LISTED = Decision(False, "pilot_not_listed")
APPROVED = Decision(True, "approved")
UNREVIEWED_ALLOWED = Decision(True, UNREVIEWED)


def decide(model: str, status: ModelStatus | None, allow_list: Collection[str] | None) -> Decision:
    """Whether a team with ``allow_list`` (None: it has none) may use ``model`` of ``status``."""
    if status is ModelStatus.RETIRED:
        return RETIRED
    if allow_list is not None:
        if model in allow_list:
            return LISTED
        return PILOT_NOT_LISTED if status is ModelStatus.PILOT else NOT_LISTED
    if status is ModelStatus.PILOT:
        return PILOT_NOT_LISTED
    return APPROVED if status is ModelStatus.APPROVED else UNREVIEWED_ALLOWED
