"""ModelPolicy: which models each team may use, for the request path and for admins.

Every gateway process keeps a copy of the statuses and allow-lists (a few rows) and re-reads it every
``refresh_s``, so a request is checked with dictionary lookups and never waits on the database; a change
made on another gateway or with ``ward approvals`` is in force everywhere within ``refresh_s``, one made
through this gateway's API at once. If the database cannot be read, the last copy stays in force.

Changes need the platform_admin role (or the host's operator, ``ward approvals``); each one is written to
the audit log (``model.status``, ``model.status_clear``, ``team.models``) with the state before and
after, and undone when that write fails.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from gateway.auth.admin_audit import AdminChangeRecorder, NoopAdminChangeRecorder
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import AuthMethod, Principal, Role
from gateway.policy.errors import ModelNotAllowed
from gateway.policy.model_access import UNREVIEWED, Decision, ModelStatus, decide
from gateway.policy.store import InvalidPolicyInput, ModelPolicyStore, ModelStatusRecord, PolicySnapshot, check_model_name

log = logging.getLogger(__name__)
T = TypeVar("T")


class PolicyUnavailable(Exception):
    """The gateway database cannot be reached for a policy change or read (HTTP 503)."""


class ModelPolicy:
    def __init__(self, store: ModelPolicyStore, *, recorder: AdminChangeRecorder | None = None, refresh_s: float = 1.0):
        self.store = store
        self.recorder = recorder or NoopAdminChangeRecorder()
        self.refresh_s = refresh_s
        self._snapshot = PolicySnapshot()
        self._task: asyncio.Task | None = None
        self._stale = False

    # ---- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Reads the policy (raising if the database cannot be read: the gateway does not serve on a
        policy it does not know) and starts re-reading it every ``refresh_s``."""
        self._snapshot = await asyncio.to_thread(self.store.snapshot)
        self._task = asyncio.create_task(self._refresh_forever(), name="model-policy-refresh")

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def refresh(self) -> None:
        """Re-reads the policy now; on failure the last copy stays in force (logged once per outage)."""
        try:
            self._snapshot = await asyncio.to_thread(self.store.snapshot)
        except SQLAlchemyError as exc:
            if not self._stale:
                log.warning("model policy not re-read, the last known stays in force: %s", exc)
            self._stale = True
        else:
            self._stale = False

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    # ---- the request path (no I/O) -----------------------------------------------------------

    def decide(self, team: str, model: str) -> Decision:
        snapshot = self._snapshot
        return decide(model, snapshot.statuses.get(model), snapshot.allow_lists.get(team))

    def check(self, principal: Principal, model: str) -> None:
        """Raises ModelNotAllowed (403) when the principal's team may not use ``model``."""
        decision = self.decide(principal.team, model)
        if not decision.allowed:
            raise ModelNotAllowed(model, principal.team, decision)

    def visible(self, principal: Principal, models: Iterable[str]) -> list[str]:
        """The models of ``models`` the principal's team may use, in their order."""
        return [m for m in models if self.decide(principal.team, m).allowed]

    # ---- admin -------------------------------------------------------------------------------

    async def model_statuses(self, actor: Principal, served: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Every model that is served or has a status: its status (``unreviewed`` when none), note,
        who set it and when, and whether a worker serves it. For platform and team admins."""
        _require_admin_reader(actor)
        records = {r.model: r for r in await self._db(self.store.statuses)}
        served = set(served)
        return [_status_entry(model, records.get(model), served) for model in sorted(served | set(records))]

    async def set_model_status(
        self, actor: Principal, model: str, status: ModelStatus | str | None, note: str = "", served: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Records a model's status (None: removes it, the model is unreviewed again); a model no worker
        serves yet may be given one. Audited. Returns the model's entry as ``model_statuses`` lists it."""
        _require_policy_admin(actor)
        check_model_name(model)
        if status is not None:
            try:
                status = ModelStatus(status)
            except ValueError:
                raise InvalidPolicyInput(f"status must be one of {', '.join(s.value for s in ModelStatus)}") from None
        previous = await self._db(lambda: self.store.put_status(model, status, note, by=actor.subject))
        after = await self._db(lambda: self.store.status(model))
        action = "model.status" if status is not None else "model.status_clear"
        try:
            await self.recorder.record_admin_change(actor, action, f"model:{model}", _status_state(previous), _status_state(after))
        except Exception:
            await self._db(lambda: self.store.put_status(model, previous.status if previous else None, previous.note if previous else "", by=actor.subject))
            raise
        await self.refresh()
        return _status_entry(model, after, set(served))

    async def team_models(self, actor: Principal, team: str, served: Iterable[str] = ()) -> dict[str, Any]:
        """A team's allow-list (None: it has none) and which served models it may use now.
        For platform admins, and team admins of that team. Raises TeamNotFound."""
        if not (actor.has(Role.PLATFORM_ADMIN) or (actor.has(Role.TEAM_ADMIN) and actor.team == team)):
            raise PermissionDenied("Reading a team's models needs platform_admin, or team_admin of that team.")
        allowed = await self._db(lambda: self.store.allow_list(team))
        return self._team_view(team, allowed, served)

    async def set_team_models(self, actor: Principal, team: str, models: list[str] | None, served: Iterable[str] = ()) -> dict[str, Any]:
        """Replaces a team's allow-list (None: removes it, every approved model is allowed). Audited.
        Raises TeamNotFound, InvalidPolicyInput."""
        _require_policy_admin(actor)
        previous = await self._db(lambda: self.store.put_allow_list(team, models, by=actor.subject))
        after = await self._db(lambda: self.store.allow_list(team))
        try:
            await self.recorder.record_admin_change(
                actor, "team.models", f"team:{team}", {"allowed_models": previous}, {"allowed_models": after}
            )
        except Exception:
            await self._db(lambda: self.store.put_allow_list(team, previous, by=actor.subject))
            raise
        await self.refresh()
        return self._team_view(team, after, served)

    def _team_view(self, team: str, allowed: list[str] | None, served: Iterable[str]) -> dict[str, Any]:
        statuses = self._snapshot.statuses
        usable = [m for m in sorted(set(served)) if decide(m, statuses.get(m), allowed).allowed]
        return {"object": "team.models", "team": team, "allowed_models": allowed, "usable_models": usable}

    async def _db(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except SQLAlchemyError as exc:
            log.warning("gateway database unreachable for the model policy: %s", exc)
            raise PolicyUnavailable("The gateway database is unavailable; try again shortly.") from exc


def _status_entry(model: str, record: ModelStatusRecord | None, served: set[str]) -> dict[str, Any]:
    entry = record.to_dict() if record else {"model": model, "status": UNREVIEWED, "note": "", "updated_at": None, "updated_by": None}
    return {"object": "model.status", **entry, "served": model in served}


def _status_state(record: ModelStatusRecord | None) -> dict[str, Any]:
    if record is None:
        return {"status": UNREVIEWED, "note": ""}
    return {"status": record.status.value, "note": record.note}


def _require_policy_admin(actor: Principal) -> None:
    if not (actor.has(Role.PLATFORM_ADMIN) or actor.auth_method is AuthMethod.LOCAL):
        raise PermissionDenied("Changing which models teams may use needs the platform_admin role.")


def _require_admin_reader(actor: Principal) -> None:
    if not actor.has_any((Role.PLATFORM_ADMIN, Role.TEAM_ADMIN)):
        raise PermissionDenied("Reading model statuses needs platform_admin or team_admin.")
