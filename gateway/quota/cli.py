"""`ward quotas`: show and change a team's limits and its scheduling class and weight from the gateway host.

    ward quotas show  TEAM [--json]
    ward quotas set   TEAM [--priority N] [--weight W] [--requests-per-minute N] [--tokens-per-minute N]
                           [--max-concurrent N] [--tokens-per-day N] [--tokens-per-month N] [--key-id K | --model M]
    ward quotas clear TEAM [--scheduling] [--limits] [--key-id K | --model M]

The same places as the running gateways: the database of `ward teams` (--database-url, $WARD_DATABASE_URL,
else SQLite in the data directory) holds teams' scheduling; admin-set limits live in Redis ($WARD_REDIS_URL
or --redis-url) or, as `ward up` keeps them, in <data dir>/quota/overrides.json; the quota file is
<data dir>/quotas.yaml. With --config the gateway's YAML says where instead. Running gateways pick a
change up within `quota.override_refresh_s` (1 s). `set` changes only the fields given (a value of `none`:
unlimited for a limit, the quota file's value for --priority / --weight); every change is an `admin` entry
of the audit log, committed before the command returns, like `ward teams` and `ward keys`.
Exit status: 0 done, 2 refused (bad value, unknown team, no audit signing key, store unreachable).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys
from typing import Any

from gateway.auth.cli_support import add_database_arguments, admin_recorder, open_database, operator, print_table
from gateway.identifiers import KEY_ID_MAX, MODEL_NAME_MAX, is_key_id, is_model_name
from gateway.quota.limits import LIMIT_KINDS, TEAM_SCOPE, QuotaLimits, Scope, ScopeKind
from gateway.quota.scheduling import SchedulingOverride, SchedulingView

NONE_WORDS = ("none", "null", "unlimited")
_COLUMNS = {"requests_per_minute": "RPM", "tokens_per_minute": "TPM", "max_concurrent": "CONCURRENT",
            "tokens_per_day": "TOKENS/DAY", "tokens_per_month": "TOKENS/MONTH"}  # fmt: skip


class CliError(Exception):
    """A refusal to print as ``ward quotas: <message>`` (exit 2)."""


def _limit_value(text: str) -> int | None:
    if text.lower() in NONE_WORDS:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (or `none`)") from None


def _scheduling_value(kind: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in NONE_WORDS:
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'} (or `none`)") from None

    return parse


def _name(check: Any, rule: str) -> Any:
    # The API's rules for the same names: an empty one (an unset shell variable) must not fall back
    # to the team's own limits.
    def parse(text: str) -> str:
        if not check(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule}")
        return text

    return parse


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_arguments(parser)
    parser.add_argument("--config", type=pathlib.Path, help="the gateway's YAML config (its quota section and database)")
    parser.add_argument("--redis-url", help="Redis of the gateways' quotas (default: $WARD_REDIS_URL)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--key-id", type=_name(is_key_id, f"a key id (1-{KEY_ID_MAX} printable characters)"),
                       help="limits of one API key of the team")
    scope.add_argument("--model", type=_name(is_model_name, f"a model name (1-{MODEL_NAME_MAX} printable characters)"),
                       help="limits of the team's use of one model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="the team's limits and scheduling in force, and where each comes from")
    show.add_argument("team")
    show.add_argument("--json", action="store_true")
    _add_store_arguments(show)
    setp = sub.add_parser("set", help="change the given limits and/or the scheduling class and weight (audited)")
    setp.add_argument("team")
    setp.add_argument("--priority", type=_scheduling_value(int), default=argparse.SUPPRESS,
                      help="scheduling class, -10..10, lower is served first (`none`: the quota file's)")
    setp.add_argument("--weight", type=_scheduling_value(float), default=argparse.SUPPRESS,
                      help="fair-share weight among teams, 0.01..100 (`none`: the quota file's)")
    for kind in LIMIT_KINDS:
        setp.add_argument(f"--{kind.value.replace('_', '-')}", dest=kind.value, type=_limit_value,
                          default=argparse.SUPPRESS, help="a limit (`none`: unlimited)")
    setp.add_argument("--json", action="store_true")
    _add_store_arguments(setp)
    clear = sub.add_parser("clear", help="drop admin-set values, so the quota file's apply again (audited)")
    clear.add_argument("team")
    clear.add_argument("--scheduling", action="store_true", help="only the class and weight")
    clear.add_argument("--limits", action="store_true", help="only the limits of the scope")
    clear.add_argument("--json", action="store_true")
    _add_store_arguments(clear)


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.audit.errors import AuditError
    from gateway.auth.stores import TeamNotFound
    from gateway.quota.errors import QuotaError

    try:
        return asyncio.run(_run(args))
    except TeamNotFound as exc:
        print(f"ward quotas: no team {exc.args[0]!r} (create it with `ward teams create`)", file=sys.stderr)
    except CliError as exc:
        print(f"ward quotas: {exc}", file=sys.stderr)
    except AuditError as exc:  # no signing key for the log, or the change could not be committed to it
        print(f"ward quotas: audit log: {exc}", file=sys.stderr)
    except QuotaError as exc:
        print(f"ward quotas: {getattr(exc, 'message', exc)}", file=sys.stderr)
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        print(f"ward quotas: the gateway database cannot be used: {detail}", file=sys.stderr)
    return 2


async def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from gateway.audit.quota_changes import AuditedQuotaChanges
    from gateway.auth.stores import TeamNotFound, TeamStore
    from gateway.quota.audit import ChangeSource
    from gateway.quota.factory import build_quota_service
    from gateway.quota.scheduling_store import SchedulingStore

    settings = _quota_settings(args)
    engine = open_database(args)
    try:
        if TeamStore(engine).get(args.team) is None:
            raise TeamNotFound(args.team)
        changes = args.action != "show"
        audit = AuditedQuotaChanges(admin_recorder(engine, args)) if changes else None
        quotas = build_quota_service(settings, audit=audit, scheduling=SchedulingStore(engine))
        try:
            scope = _scope(args)
            who = operator()
            common = {"actor": who.subject, "principal": who, "source": ChangeSource.CLI}
            try:
                if args.action == "set":
                    await _set(args, quotas, scope, settings, common)
                elif args.action == "clear":
                    if args.limits or not args.scheduling:
                        _require_limit_store(settings, args)
                        await quotas.clear_limits(args.team, scope=scope, **common)
                    if args.scheduling or not args.limits:
                        await quotas.set_scheduling(args.team, None, **common)
            except ValidationError as exc:
                raise CliError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
            _show(args, await quotas.team_scheduling(args.team), await quotas.team_limits(args.team))
        finally:
            await quotas.aclose()
    finally:
        engine.dispose()
    return 0


async def _set(args: argparse.Namespace, quotas: Any, scope: Scope, settings: Any, common: dict) -> None:
    given_limits = {kind.value: getattr(args, kind.value) for kind in LIMIT_KINDS if hasattr(args, kind.value)}
    given_scheduling = {name: getattr(args, name) for name in ("priority", "weight") if hasattr(args, name)}
    if not given_limits and not given_scheduling:
        raise CliError("give at least one of --priority, --weight or a limit (see `ward quotas set --help`)")
    if given_scheduling and scope != TEAM_SCOPE:
        raise CliError("--priority and --weight belong to the team, not to one key or model")
    if given_limits:
        _require_limit_store(settings, args)
        # Only the limits given change: the rest stay as they are in force now.
        current = next((v.limits for v in await quotas.team_limits(args.team) if v.scope == scope), QuotaLimits())
        merged = QuotaLimits.model_validate(current.model_dump() | given_limits)
        await quotas.set_limits(args.team, merged, scope=scope, **common)
    if given_scheduling:
        current = await quotas.team_scheduling(args.team)
        admin_set = {
            "priority": current.scheduling.priority if current.priority_source == "admin" else None,
            "weight": current.scheduling.weight if current.weight_source == "admin" else None,
        }
        await quotas.set_scheduling(args.team, SchedulingOverride(**(admin_set | given_scheduling)), **common)


def _quota_settings(args: argparse.Namespace) -> Any:
    """The quota settings of the gateways this host runs: from --config, else `ward up`'s layout."""
    from gateway.db.engine import default_data_dir
    from gateway.quota.settings import QuotaSettings

    if args.config is not None:
        from gateway.settings import ConfigFileError, GatewaySettings

        try:
            gateway = GatewaySettings.load(args.config)
        except (ConfigFileError, ValueError) as exc:
            raise CliError(f"invalid configuration: {exc}") from None
        settings = gateway.quota
        if args.database_url is None and gateway.database_url:
            args.database_url = gateway.database_url
        if args.data_dir is None and gateway.data_dir:
            args.data_dir = str(gateway.data_dir)
    else:
        data_dir = pathlib.Path(args.data_dir) if args.data_dir else default_data_dir()
        quota_file = data_dir / "quotas.yaml"
        settings = QuotaSettings(
            config_file=quota_file if quota_file.exists() else None,
            overrides_file=data_dir / "quota" / "overrides.json",
        )
    if args.redis_url:
        settings = settings.model_copy(update={"redis_url": args.redis_url})
    return settings


def _require_limit_store(settings: Any, args: argparse.Namespace) -> None:
    if settings.redis_url is None and settings.overrides_file is None:
        raise CliError(
            f"the gateway of {args.config} keeps admin-set limits in its memory only (no Redis, no "
            "quota.overrides_file): change them with PUT /admin/teams/{team}/quotas"
        )


def _scope(args: argparse.Namespace) -> Scope:
    if getattr(args, "key_id", None) is not None:
        return Scope(ScopeKind.KEY, args.key_id)
    if getattr(args, "model", None) is not None:
        return Scope(ScopeKind.MODEL, args.model)
    return TEAM_SCOPE


def _show(args: argparse.Namespace, scheduling: SchedulingView, views: list[Any]) -> None:
    from gateway.quota.admin_router import team_quotas_view

    if args.json:
        print(json.dumps({"team": args.team, "scheduling": scheduling.as_dict(), "quotas": team_quotas_view(args.team, views)}))
        return
    policy = scheduling.scheduling
    print(f"team {args.team}: priority {policy.priority} ({scheduling.priority_source}), "
          f"weight {policy.weight:g} ({scheduling.weight_source})")
    rows = []
    for view in views:
        label = "team" if view.scope.kind is ScopeKind.TEAM else f"{view.scope.kind.value} {view.scope.name}"
        values = [view.limits.get(kind) for kind in LIMIT_KINDS]
        rows.append([label, view.source, *("-" if v is None else str(v) for v in values)])
    print_table(rows, ["SCOPE", "SOURCE", *(_COLUMNS[kind.value] for kind in LIMIT_KINDS)])
