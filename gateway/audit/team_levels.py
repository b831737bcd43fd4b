"""Each team's capture level, read from the teams table and cached briefly.

Lookups run on the audit writer's thread, never on the event loop. When the database cannot answer
(an outage while spooling), the last known level is used, or the most protective one (metadata) for a
team never seen.
"""
from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, select

from gateway.audit.capture import CaptureLevel
from gateway.audit.chain import OUTAGE_ERRORS
from gateway.db.models_identity import Team


class TeamCaptureLevels:
    def __init__(
        self,
        engine: Engine,
        *,
        default: CaptureLevel = CaptureLevel.FULL,
        unauthenticated: CaptureLevel = CaptureLevel.METADATA,
        ttl_s: float = 5.0,
    ):
        self.engine = engine
        self.default = default
        self.unauthenticated = unauthenticated
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, CaptureLevel]] = {}
        self._lock = threading.Lock()

    def level_for(self, team: str | None) -> CaptureLevel:
        """The capture level of team's records (``unauthenticated`` when team is None)."""
        if team is None:
            return self.unauthenticated
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(team)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1]
        try:
            with self.engine.connect() as conn:
                stored = conn.execute(select(Team.capture_level).where(Team.name == team)).scalar_one_or_none()
        except OUTAGE_ERRORS:
            return cached[1] if cached is not None else CaptureLevel.METADATA
        if stored is None:
            level = self.default
        else:
            try:
                level = CaptureLevel(stored)
            except ValueError:
                level = CaptureLevel.METADATA  # an unreadable setting must not widen what is kept
        with self._lock:
            self._cache[team] = (now, level)
        return level


class FixedCaptureLevels:
    """One level for every team (tests, tools, and deployments without per-team settings)."""

    def __init__(self, level: CaptureLevel = CaptureLevel.FULL, unauthenticated: CaptureLevel | None = None):
        self.level = level
        self.unauthenticated = unauthenticated or level

    def level_for(self, team: str | None) -> CaptureLevel:
        return self.unauthenticated if team is None else self.level
