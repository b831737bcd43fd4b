"""Admin changes from tools that run no AuditLog (the `ward keys` / `ward teams` commands).

The gateway passes its AuditLog as the AdminChangeRecorder (gateway.auth.admin_audit); a one-shot
command uses this instead: each change is appended in its own transaction, durable on return.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

from gateway.audit.chain import ChainStore
from gateway.audit.records import Actor, admin_draft, as_actor
from gateway.audit.service import build_chain_store, create_audit_engine, resolve_paths
from gateway.audit.settings import AuditSettings
from gateway.auth.principal import Principal


class DirectAdminRecorder:
    """An AdminChangeRecorder writing straight to the chain (no batching, no background task)."""

    def __init__(self, store: ChainStore, *, owns_engine: bool = False):
        self.store = store
        self._owns_engine = owns_engine

    @classmethod
    def from_settings(cls, settings: AuditSettings, data_dir: str | os.PathLike | None = None) -> DirectAdminRecorder:
        """A recorder on the configured database (already migrated); close() it when done."""
        paths = resolve_paths(settings, data_dir)
        engine = create_audit_engine(paths.database_url, settings.write_timeout_s)
        return cls(build_chain_store(settings, paths, engine), owns_engine=True)

    async def record_admin_change(
        self,
        principal: Principal | Actor,
        action: str,
        target: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        """Appends the change; returns once committed. Raises AuditUnavailable, AuditInputError."""
        draft = admin_draft(as_actor(principal), action, target, before, after)
        await asyncio.to_thread(self.store.append, [draft])

    def close(self) -> None:
        if self._owns_engine:
            self.store.engine.dispose()
