"""`ward approvals`: the model approval board's decisions, from the gateway host.

    ward approvals list  [--json]                        every model with a status, every team's allow-list
    ward approvals set   MODEL approved|pilot|retired [--note TEXT]
    ward approvals clear MODEL                           no status: the model is unreviewed (used as approved)
    ward approvals allow TEAM MODEL [MODEL ...]          the team may use exactly these models
    ward approvals allow TEAM --all-approved             no allow-list: every approved model
    ward approvals allow TEAM --none                     an empty allow-list: no model
    ward approvals show  TEAM [--json]                   the team's allow-list and what it may use

The same database as `ward teams` (--database-url, $WARD_DATABASE_URL, else SQLite in the data
directory); running gateways apply a change within `quota.override_refresh_s` (1 s). Every change is an
`admin` entry of the audit log, committed before the command returns. The rule is in
gateway.policy.model_access (docs/identity.md, "Model approval").
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.auth.cli_support import add_database_arguments, admin_recorder, open_database, operator, print_table
from gateway.policy.model_access import UNREVIEWED, ModelStatus, decide


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("list", help="every model with a status and every team's allow-list")
    ls.add_argument("--json", action="store_true")
    add_database_arguments(ls)
    setp = sub.add_parser("set", help="record a model's status (audited)")
    setp.add_argument("model")
    setp.add_argument("status", choices=[s.value for s in ModelStatus])
    setp.add_argument("--note", default="", help="e.g. the board's decision reference")
    add_database_arguments(setp)
    clear = sub.add_parser("clear", help="remove a model's status: unreviewed, used as approved (audited)")
    clear.add_argument("model")
    add_database_arguments(clear)
    allow = sub.add_parser("allow", help="replace a team's allow-list (audited)")
    allow.add_argument("team")
    allow.add_argument("models", nargs="*", metavar="MODEL")
    which = allow.add_mutually_exclusive_group()
    which.add_argument("--all-approved", action="store_true", help="remove the allow-list: every approved model")
    which.add_argument("--none", action="store_true", help="an empty allow-list: no model at all")
    add_database_arguments(allow)
    show = sub.add_parser("show", help="a team's allow-list and the models it may use")
    show.add_argument("team")
    show.add_argument("--json", action="store_true")
    add_database_arguments(show)


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.audit.errors import AuditError
    from gateway.auth.stores import TeamNotFound
    from gateway.policy.store import InvalidPolicyInput

    try:
        return asyncio.run(_run(args))
    except TeamNotFound as exc:
        print(f"ward approvals: no team {exc.args[0]!r} (create it with `ward teams create`)", file=sys.stderr)
    except InvalidPolicyInput as exc:
        print(f"ward approvals: {exc}", file=sys.stderr)
    except AuditError as exc:  # no signing key for the log, or the change could not be committed to it
        print(f"ward approvals: audit log: {exc}", file=sys.stderr)
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"ward approvals: the gateway database cannot be used: {detail}", file=sys.stderr)
    return 2


async def _run(args: argparse.Namespace) -> int:
    from gateway.policy.service import ModelPolicy
    from gateway.policy.store import InvalidPolicyInput, ModelPolicyStore

    engine = open_database(args)
    try:
        store = ModelPolicyStore(engine)
        changes = args.action in ("set", "clear", "allow")
        policy = ModelPolicy(store, recorder=admin_recorder(engine, args) if changes else None)
        who = operator()
        if args.action == "list":
            _list(args, store)
        elif args.action == "set":
            entry = await policy.set_model_status(who, args.model, args.status, args.note)
            print(f"model {args.model}: {entry['status']}")
        elif args.action == "clear":
            await policy.set_model_status(who, args.model, None)
            print(f"model {args.model}: {UNREVIEWED} (used as approved)")
        elif args.action == "allow":
            if args.all_approved or args.none:
                if args.models:
                    raise InvalidPolicyInput("give model names or --all-approved / --none, not both")
                models = None if args.all_approved else []
            elif not args.models:
                raise InvalidPolicyInput("name the models the team may use, or give --all-approved or --none")
            else:
                models = args.models
            view = await policy.set_team_models(who, args.team, models)
            allowed = view["allowed_models"]
            print(f"team {args.team}: " + ("every approved model" if allowed is None else f"allowed {', '.join(allowed) or 'no model'}"))
        else:
            _show(args, store)
    finally:
        engine.dispose()
    return 0


def _list(args: argparse.Namespace, store: Any) -> None:
    statuses = store.statuses()
    lists = store.snapshot().allow_lists
    if args.json:
        print(json.dumps({"models": [s.to_dict() for s in statuses],
                          "allow_lists": {team: sorted(models) for team, models in sorted(lists.items())}}))
        return
    print_table([[s.model, s.status.value, s.updated_at.isoformat(), s.updated_by, s.note] for s in statuses],
                ["MODEL", "STATUS", "UPDATED", "BY", "NOTE"])
    print()
    print_table([[team, ", ".join(sorted(models)) or "(none)"] for team, models in sorted(lists.items())],
                ["TEAM", "ALLOWED MODELS"])


def _show(args: argparse.Namespace, store: Any) -> None:
    allowed = store.allow_list(args.team)
    statuses = {s.model: s.status for s in store.statuses()}
    names = sorted(set(statuses) | set(allowed or ()))
    rows = []
    for model in names:
        decision = decide(model, statuses.get(model), allowed)
        rows.append({"model": model, "status": statuses[model].value if model in statuses else UNREVIEWED,
                     "allowed": decision.allowed, "reason": decision.reason})
    if args.json:
        print(json.dumps({"team": args.team, "allowed_models": allowed, "models": rows}))
        return
    print(f"team {args.team}: " + ("no allow-list (every approved or unreviewed model)" if allowed is None
                                   else f"allow-list: {', '.join(allowed) or '(empty: no model)'}"))
    print_table([[r["model"], r["status"], "yes" if r["allowed"] else "no", r["reason"]] for r in rows],
                ["MODEL", "STATUS", "MAY USE", "WHY"])
