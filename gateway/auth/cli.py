"""`ward keys`: create, list and revoke API keys in the gateway database.

Revocation reaches every running gateway within its key cache time (2 s at most). Keys of the
oversight roles (`auditor`, `security_officer`) are made here only by an operator holding the audit
log's signing key: the key file must already exist on this host (separation of duties, see
docs/identity.md).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from gateway.audit.errors import AuditError
from gateway.auth.cli_support import add_database_arguments, identity_admin, open_database, operator, parse_expiry, print_table
from gateway.auth.principal import OVERSIGHT_ROLES, Role
from gateway.auth.records import InvalidIdentityInput, utcnow
from gateway.auth.stores import KeyNotFound, TeamNotFound


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a key (printed once, stored only as a hash)")
    create.add_argument("--team", required=True)
    create.add_argument("--role", default=Role.USER.value, choices=[r.value for r in Role])
    create.add_argument("--expires", help="lifetime (30d, 12h, 90m, 2w) or date (2027-01-31)")
    create.add_argument("--description", default="")
    create.add_argument("--json", action="store_true", help="print the record and key as JSON")
    add_database_arguments(create)
    ls = sub.add_parser("list", help="list keys (never their secrets)")
    ls.add_argument("--team")
    ls.add_argument("--active", action="store_true", help="only keys that still authenticate (hide revoked and expired keys)")
    ls.add_argument("--json", action="store_true")
    add_database_arguments(ls)
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    add_database_arguments(revoke)


def run(args: argparse.Namespace) -> int:
    try:
        engine = open_database(args)
        oversight = args.action == "create" and Role(args.role) in OVERSIGHT_ROLES
        admin = identity_admin(engine, args, records_changes=args.action != "list", signing_key_must_exist=oversight)
        if args.action == "create":
            expires = parse_expiry(args.expires) if args.expires else None
            record, text = asyncio.run(
                admin.create_key(operator(), args.team, args.role, description=args.description, expires_at=expires)
            )
            if args.json:
                print(json.dumps({**record.to_dict(), "key": text}))
            else:
                print(text)
                print(f"key id {record.id}, team {record.team}, role {record.role}; shown once, store it now.", file=sys.stderr)
            return 0
        if args.action == "list":
            records = admin.keys.list(args.team, include_revoked=not args.active)
            if args.active:  # an expired key no longer gets in either
                now = utcnow()
                records = [r for r in records if r.is_active(now)]
            if args.json:
                print(json.dumps([r.to_dict() for r in records]))
            else:
                print_table(
                    [[r.id, r.team, r.role, r.expires_at.isoformat() if r.expires_at else "-",
                      r.revoked_at.isoformat() if r.revoked_at else "-", r.description] for r in records],
                    ["ID", "TEAM", "ROLE", "EXPIRES", "REVOKED", "DESCRIPTION"],
                )
            return 0
        record = asyncio.run(admin.revoke_key(operator(), args.key_id))
        print(f"revoked {record.id} (team {record.team}) at {record.revoked_at.isoformat()}")
        return 0
    except TeamNotFound as exc:
        print(f"ward keys: no team {exc.args[0]!r} (create it with `ward teams create`)", file=sys.stderr)
    except KeyNotFound as exc:
        print(f"ward keys: no key {exc.args[0]!r}", file=sys.stderr)
    except InvalidIdentityInput as exc:
        print(f"ward keys: {exc}", file=sys.stderr)
    except AuditError as exc:  # no signing key for the log, or the change could not be committed to it
        print(f"ward keys: audit log: {exc}", file=sys.stderr)
    return 2
