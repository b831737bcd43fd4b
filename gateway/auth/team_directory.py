"""Whether a team exists and is enabled, cached briefly (tokens and certificates name teams by claim)."""
from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from gateway.auth.errors import PermissionDenied
from gateway.auth.records import TeamRecord
from gateway.auth.stores import TeamStore
from gateway.auth.ttl_cache import TTLCache

_ABSENT = "absent"


class TeamDirectory:
    def __init__(self, teams: TeamStore, cache_ttl_s: float = 2.0):
        self.teams = teams
        self._cache: TTLCache[str, TeamRecord | str] = TTLCache(cache_ttl_s)

    async def require_active(self, team: str) -> None:
        """Raises PermissionDenied (403) when the team is unknown to Ward or disabled.

        A valid credential for a team Ward does not know is a known caller without access, hence 403.
        """
        entry = self._cache.get(team)
        if entry is None:
            entry = await run_in_threadpool(self.teams.get, team) or _ABSENT
            self._cache.put(team, entry)
        if entry is _ABSENT:
            raise PermissionDenied("Your team is not registered in Ward.", code="team_unknown")
        if entry.disabled:  # type: ignore[union-attr]
            raise PermissionDenied("Your team is disabled.", code="team_disabled")
