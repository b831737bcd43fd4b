"""What the serving path asks about the caller's team: may it use this model, which models may it see,
and which scheduling class and weight its requests carry to the engine. No call does I/O.

``OpenTeamPolicy`` (every model, class 0, weight 1.0) is the default of a bare ``create_app``;
``GovernedTeamPolicy`` answers from the model approval policy and the quota configuration.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from gateway.auth.principal import Principal
from gateway.policy.service import ModelPolicy
from gateway.quota.scheduling import DEFAULT_SCHEDULING, TeamScheduling


class SchedulingSource(Protocol):
    def scheduling(self, team: str) -> TeamScheduling: ...


class TeamPolicy(Protocol):
    def check_model(self, principal: Principal, model: str) -> None:
        """Raises an OpenAIError (403) when the principal's team may not use ``model``."""

    def visible_models(self, principal: Principal, models: Iterable[str]) -> list[str]:
        """The models of ``models`` the principal's team may use, in their order."""

    def scheduling(self, team: str) -> TeamScheduling:
        """The team's priority class and fair-share weight in force."""


class OpenTeamPolicy:
    def check_model(self, principal: Principal, model: str) -> None:
        return None

    def visible_models(self, principal: Principal, models: Iterable[str]) -> list[str]:
        return list(models)

    def scheduling(self, team: str) -> TeamScheduling:
        return DEFAULT_SCHEDULING


class GovernedTeamPolicy:
    """The model approval policy plus each team's scheduling (from the quota layer). Started and
    stopped with the app (``startup`` / ``shutdown``), which keeps the model policy's copy fresh."""

    def __init__(self, models: ModelPolicy, scheduling: SchedulingSource) -> None:
        self.models = models
        self._scheduling = scheduling

    async def startup(self) -> None:
        await self.models.startup()

    async def shutdown(self) -> None:
        await self.models.shutdown()

    def check_model(self, principal: Principal, model: str) -> None:
        self.models.check(principal, model)

    def visible_models(self, principal: Principal, models: Iterable[str]) -> list[str]:
        return self.models.visible(principal, models)

    def scheduling(self, team: str) -> TeamScheduling:
        return self._scheduling.scheduling(team)
