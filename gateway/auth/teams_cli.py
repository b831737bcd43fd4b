"""`ward teams`: create, list, disable and enable teams in the gateway database."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from gateway.audit.errors import AuditError
from gateway.auth.cli_support import add_database_arguments, identity_admin, open_database, operator, print_table
from gateway.auth.records import CAPTURE_LEVELS, InvalidIdentityInput
from gateway.auth.stores import TeamExists, TeamNotFound


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a team")
    create.add_argument("name")
    create.add_argument("--display-name", default="")
    create.add_argument("--capture-level", default="full", choices=CAPTURE_LEVELS, help="what the audit log keeps of prompts")
    add_database_arguments(create)
    ls = sub.add_parser("list", help="list teams")
    ls.add_argument("--json", action="store_true")
    add_database_arguments(ls)
    for name, text in (("disable", "disable a team: its keys, tokens and certificates stop working"), ("enable", "enable a team again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("name")
        add_database_arguments(p)


def run(args: argparse.Namespace) -> int:
    try:
        admin = identity_admin(open_database(args), args, records_changes=args.action != "list")
        if args.action == "create":
            team = asyncio.run(admin.create_team(operator(), args.name, args.display_name, args.capture_level))
            print(f"created team {team.name}")
        elif args.action == "list":
            teams = asyncio.run(admin.list_teams(operator()))
            if args.json:
                print(json.dumps([t.to_dict() for t in teams]))
            else:
                print_table(
                    [[t.name, t.display_name, t.capture_level, "disabled" if t.disabled else "enabled"] for t in teams],
                    ["NAME", "DISPLAY NAME", "CAPTURE", "STATE"],
                )
        else:
            team = asyncio.run(admin.set_team_disabled(operator(), args.name, args.action == "disable"))
            print(f"team {team.name} {'disabled' if team.disabled else 'enabled'}")
        return 0
    except TeamExists as exc:
        print(f"ward teams: team {exc.args[0]!r} exists already", file=sys.stderr)
    except TeamNotFound as exc:
        print(f"ward teams: no team {exc.args[0]!r}", file=sys.stderr)
    except InvalidIdentityInput as exc:
        print(f"ward teams: {exc}", file=sys.stderr)
    except AuditError as exc:  # no signing key for the log, or the change could not be committed to it
        print(f"ward teams: audit log: {exc}", file=sys.stderr)
    return 2
