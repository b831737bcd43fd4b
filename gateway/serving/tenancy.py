"""The tenancy fields of every Generate call: whose request it is and the team's policy in force.

``team`` is the engine's fair-share account, ``team_priority`` and ``team_weight`` the class and weight
admins set for it (the client's own ``priority`` travels separately and orders requests only within the
team), ``cache_salt`` keeps the prefix cache per team.
"""
from __future__ import annotations

from typing import Any

from gateway.http.request_context import RequestContext
from gateway.policy.team_policy import SchedulingSource


def tenancy_fields(ctx: RequestContext, policy: SchedulingSource) -> dict[str, Any]:
    """Keyword arguments of ``pb.GenerateRequest`` for the request's caller (none without one)."""
    principal = ctx.principal
    if principal is None:
        return {}
    scheduling = policy.scheduling(principal.team)
    return {
        "team": principal.team,
        "team_priority": scheduling.priority,
        "team_weight": scheduling.weight,
        "cache_salt": principal.cache_salt,
    }
