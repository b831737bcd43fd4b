"""The keys ``ward up`` hands out: a user key of team ``default`` and the bootstrap platform admin.

Both are real rows of the gateway database (stored as hashes), so they behave like any key made
with ``ward keys create``: listable, revocable, audited.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.auth.api_key_format import hash_secret, parse_key, secret_matches
from gateway.auth.factory import ensure_bootstrap_admin_key
from gateway.auth.principal import Role
from gateway.auth.records import as_utc, utcnow
from gateway.auth.stores import KeyStore, TeamStore
from gateway.db.models_identity import ApiKey

DEFAULT_TEAM = "default"
USER_KEY_DESCRIPTION = "ward up default user key"


class KeySetupError(ValueError):
    """A key given to ``ward up`` cannot be used (malformed, or clashing with a stored key)."""


@dataclass(frozen=True)
class LocalKeys:
    """What to print: key texts that are new or were given (None: made earlier, shown back then)."""

    user_key: str | None
    admin_key: str | None


def ensure_local_keys(engine: Engine, *, user_key: str | None = None, admin_key: str | None = None) -> LocalKeys:
    """Team ``default`` with a ``user`` key, and a platform-admin key, on a migrated database.

    ``user_key`` (a Ward key text) is stored if missing, else checked; without it one key is made on
    the first start and returned once. ``admin_key`` is the bootstrap key of the settings (checked
    in memory by the gateway); without it one platform-admin key is made once
    (``ensure_bootstrap_admin_key``). Raises KeySetupError.
    """
    TeamStore(engine).ensure(DEFAULT_TEAM, "Default team (ward up)")
    if user_key is not None:
        store_given_key(engine, user_key, DEFAULT_TEAM, Role.USER)
        shown_user = user_key
    elif KeyStore(engine).find_active(DEFAULT_TEAM, Role.USER, USER_KEY_DESCRIPTION) is None:
        _, shown_user = KeyStore(engine).create(
            DEFAULT_TEAM, Role.USER, description=USER_KEY_DESCRIPTION, created_by="ward up"
        )
    else:
        shown_user = None
    shown_admin = admin_key if admin_key is not None else ensure_bootstrap_admin_key(engine)
    return LocalKeys(shown_user, shown_admin)


def store_given_key(engine: Engine, text: str, team: str, role: Role) -> None:
    """Stores a key whose text the operator chose (idempotent); raises KeySetupError.

    The text must have Ward's key format (``ward-<16 hex>.<43 characters>``, as ``ward keys create``
    prints), so it is authenticated like any other key. A key id already stored must hold the same
    secret, team and role, and be active.
    """
    parsed = parse_key(text)
    if parsed is None:
        raise KeySetupError(
            "--api-key must be a Ward key (ward-<16 hex digits>.<43 characters>), such as one printed by "
            "`ward up` or `ward keys create`"
        )
    now = utcnow()
    with Session(engine) as session, session.begin():
        row = session.get(ApiKey, parsed.key_id)
        if row is None:
            session.add(
                ApiKey(
                    id=parsed.key_id,
                    team=team,
                    role=role.value,
                    secret_hash=hash_secret(parsed.key_id, parsed.secret),
                    description=USER_KEY_DESCRIPTION,
                    created_at=now,
                    created_by="ward up --api-key",
                    expires_at=None,
                    revoked_at=None,
                )
            )
            return
        if not secret_matches(parsed.key_id, parsed.secret, row.secret_hash):
            raise KeySetupError("--api-key: another key with this key id is stored already")
        expires_at = as_utc(row.expires_at)
        if row.revoked_at is not None or (expires_at is not None and expires_at <= now):
            raise KeySetupError("--api-key: this key was revoked or has expired")
        if row.team != team or row.role != role.value:
            raise KeySetupError(f"--api-key: this key belongs to team {row.team!r} with role {row.role!r}")
