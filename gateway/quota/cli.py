"""`ward quotas`: a team's quota limits and its scheduling policy (priority class and weight), through a
running gateway's admin API, so every change is validated, applied to every gateway at once and
audited exactly like a change made with curl.

    ward quotas show TEAM
    ward quotas set TEAM [--priority N] [--weight W] [--requests-per-minute N] ... [--key-id K | --model M]
    ward quotas clear TEAM [--key-id K | --model M]

``set`` changes only the fields given (``none`` makes a limit unlimited, or puts the class or weight back to
its default); the others keep the values in force. The gateway is ``--url`` (default
$WARD_GATEWAY_URL or http://127.0.0.1:8000); the key, a platform admin's, comes from $WARD_ADMIN_KEY or
``--admin-key-file``. Exit status: 0 done, 1 refused by the gateway (the reason is printed), 2 bad usage
or no gateway.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote

import httpx

from gateway.quota.limits import LimitKind

DEFAULT_URL = "http://127.0.0.1:8000"


def _optional_int(text: str) -> int | None:
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer (or `none`)") from None


def _optional_float(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or `none`)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="the limits and scheduling policy in force for a team")
    set_ = sub.add_parser("set", help="change some limits or the scheduling policy of a team (audited)")
    clear = sub.add_parser("clear", help="drop admin-set limits, so the quota file applies again (audited)")
    for p in (show, set_, clear):
        p.add_argument("team")
        p.add_argument("--url", default=os.environ.get("WARD_GATEWAY_URL", DEFAULT_URL), help="the gateway")
        p.add_argument("--admin-key-file", help="a file holding a platform admin's key (default: $WARD_ADMIN_KEY)")
        p.add_argument("--json", action="store_true", help="print the gateway's answer as JSON")
    for p in (set_, clear):
        where = p.add_mutually_exclusive_group()
        where.add_argument("--key-id", help="one API key of the team instead of the whole team")
        where.add_argument("--model", help="the team's use of one model instead of the whole team")
    set_.add_argument("--priority", type=_optional_int, default=argparse.SUPPRESS,
                      help="the team's priority class, -10..10 (lower is served first; default 0)")
    set_.add_argument("--weight", type=_optional_float, default=argparse.SUPPRESS,
                      help="the team's fair share of the engine, 0.01..100 (default 1)")
    for kind in LimitKind:
        set_.add_argument("--" + kind.value.replace("_", "-"), dest=kind.value, type=_optional_int,
                          default=argparse.SUPPRESS, help=f"{kind.value} (`none`: unlimited)")


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    names = ["priority", "weight", *(kind.value for kind in LimitKind)]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _admin_key(args: argparse.Namespace) -> str | None:
    if args.admin_key_file:
        with open(args.admin_key_file) as f:
            return f.read().strip()
    return os.environ.get("WARD_ADMIN_KEY")


def _print(view: dict) -> None:
    policy = view.get("scheduling", {})
    print(f"team {view['team']}: priority class {policy.get('priority')}, weight {policy.get('weight')}")
    print(f"  team limits ({view.get('source')}): {_limits_text(view.get('limits', {}))}")
    for kind in ("keys", "models"):
        for name, entry in view.get(kind, {}).items():
            print(f"  {kind[:-1]} {name} ({entry['source']}): {_limits_text(entry['limits'])}")


def _limits_text(limits: dict) -> str:
    set_ = [f"{k}={v}" for k, v in limits.items() if v is not None]
    return ", ".join(set_) if set_ else "unlimited"


def run(args: argparse.Namespace) -> int:
    key = _admin_key(args)
    if not key:
        print("ward quotas: no admin key: set WARD_ADMIN_KEY or give --admin-key-file", file=sys.stderr)
        return 2
    url = f"{args.url.rstrip('/')}/admin/teams/{quote(args.team, safe='')}/quotas"
    params = {k: v for k, v in (("key_id", getattr(args, "key_id", None)), ("model", getattr(args, "model", None))) if v}
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(timeout=30) as client:
            if args.action == "show":
                r = client.get(url, headers=headers)
            elif args.action == "set":
                changes = _changes(args)
                if not changes:
                    print("ward quotas set: give at least one field to change (see --help)", file=sys.stderr)
                    return 2
                r = client.patch(url, headers=headers, params=params, json=changes)
            else:
                r = client.delete(url, headers=headers, params=params)
    except httpx.HTTPError as exc:
        print(f"ward quotas: cannot reach the gateway at {args.url}: {exc}", file=sys.stderr)
        return 2
    try:
        body = r.json()
    except ValueError:
        body = {}
    if r.status_code != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        print(f"ward quotas: the gateway refused ({r.status_code}): {message or r.text[:300]}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body))
    else:
        _print(body)
    return 0
