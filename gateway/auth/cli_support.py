"""What `ward keys` and `ward teams` share: the database, the operator's principal, date parsing."""
from __future__ import annotations

import argparse
import getpass
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine

from gateway.auth.admin_service import IdentityAdmin
from gateway.auth.principal import PLATFORM_TEAM, AuthMethod, Principal, Role, expand_roles
from gateway.auth.records import InvalidIdentityInput
from gateway.auth.stores import KeyStore, TeamStore
from gateway.db import create_db_engine, database_url, upgrade_to_head

_DURATION_RE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="gateway database (default: $WARD_DATABASE_URL, else SQLite in the data directory)")
    parser.add_argument("--data-dir", help="Ward's data directory (default: $WARD_DATA_DIR or ~/.local/share/ward)")
    parser.add_argument("--signing-key", help="the audit log's signing key (default: $WARD_AUDIT__SIGNING_KEY_PATH, "
                        "else <data dir>/audit/checkpoint-key.pem)")


def open_database(args: argparse.Namespace) -> Engine:
    """The gateway database, migrated to the current schema."""
    url = database_url(args.data_dir, args.database_url)
    upgrade_to_head(url)
    return create_db_engine(url)


def operator() -> Principal:
    """The principal of an operator at the gateway host: full platform rights (the host is trusted)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Principal(subject=f"cli:{user}", team=PLATFORM_TEAM, roles=expand_roles([Role.PLATFORM_ADMIN]), auth_method=AuthMethod.LOCAL)


def admin_recorder(engine: Engine, args: argparse.Namespace, *, signing_key_must_exist: bool = False) -> Any:
    """A recorder appending each change to the audit log in ``engine``'s database, durable before the
    command returns (``DirectAdminRecorder``). The log's signing key is loaded first, so a command that
    cannot record changes none.

    Raises SigningKeyError when the log holds entries but the key that signed them is not on this host,
    and, with ``signing_key_must_exist``, whenever the key file is missing (no new key is made): the
    command then proves its operator holds the key of the log it writes to.
    """
    from gateway.audit.admin_recorder import DirectAdminRecorder
    from gateway.audit.errors import SigningKeyError
    from gateway.audit.service import build_chain_store, resolve_paths
    from gateway.audit.settings import AuditSettings, signing_key_path

    url = engine.url.render_as_string(hide_password=False)
    settings = AuditSettings(database_url=url, signing_key_path=signing_key_path(args.signing_key))
    paths = resolve_paths(settings, args.data_dir)
    if signing_key_must_exist and not paths.signing_key.exists():
        raise SigningKeyError(
            f"the audit signing key {paths.signing_key} is not on this host; this change needs it (--signing-key)"
        )
    return DirectAdminRecorder(build_chain_store(settings, paths, engine))


def identity_admin(
    engine: Engine, args: argparse.Namespace, *, records_changes: bool = True, signing_key_must_exist: bool = False
) -> IdentityAdmin:
    """Identity administration on ``engine``; with ``records_changes`` every change is audited
    (``admin_recorder``, whose errors it raises)."""
    recorder = admin_recorder(engine, args, signing_key_must_exist=signing_key_must_exist) if records_changes else None
    return IdentityAdmin(TeamStore(engine), KeyStore(engine), recorder)


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """`30d`, `12h`, `90m`, `2w`, or an ISO date/datetime (naive = UTC). Raises InvalidIdentityInput."""
    now = now or datetime.now(timezone.utc)
    m = _DURATION_RE.match(text.strip())
    if m:
        try:
            return now + timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        except OverflowError:
            raise InvalidIdentityInput(f"expiry {text!r} is past the year 9999") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidIdentityInput(f"cannot read expiry {text!r}: use e.g. 30d, 12h or 2027-01-31") from None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
