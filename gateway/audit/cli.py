"""`ward audit`: verify, export and purge the audit log; export checkpoints.

    ward audit verify      [--data-dir DIR | --database-url URL] [--public-key PEM]... [--checkpoints FILE]
    ward audit verify-export FILE [--public-key PEM]...   (an export made with GET /audit/export?signed=true)
    ward audit export      [--format jsonl|csv] [--out FILE] [--since T] [--until T] [--team T] ...
    ward audit checkpoints [--out FILE] [--now]
    ward audit public-key
    ward audit purge       [--retention-days N] [--dry-run]

Exit status: 0 success (verify: the log is intact), 1 verify (or verify-export) found tampering, 2 the command could
not run (bad arguments, database unreachable, no trusted key).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from gateway.audit.canonical import parse_utc_iso
from gateway.audit.errors import AuditError
from gateway.audit.settings import AuditSettings, signing_key_path


def _add_database_args(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data-dir", help="Ward's data directory (SQLite database ward.db and the audit key)")
    where.add_argument("--database-url", help="SQLAlchemy URL of the database (default: $WARD_DATABASE_URL)")
    parser.add_argument("--signing-key", help="the checkpoint signing key (default: $WARD_AUDIT__SIGNING_KEY_PATH, "
                        "else <data dir>/audit/checkpoint-key.pem)")


def _utc_time(text: str):
    try:
        return parse_utc_iso(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO-8601 time with a zone (e.g. 2025-01-31T00:00:00Z)") from None


def _add_filter_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=_utc_time, help="records received at or after (ISO-8601 with zone)")
    parser.add_argument("--until", type=_utc_time, help="records received before (ISO-8601 with zone)")
    for name in ("team", "subject", "model"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--status", help="ok, error, cancelled, rejected, incomplete, denied, or an HTTP code")
    parser.add_argument("--kind", choices=("request", "admin", "access", "purge"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("verify", help="recompute the chain and check every signature")
    _add_database_args(p)
    p.add_argument("--public-key", action="append", default=[], help="trusted public key PEM (repeatable; default: the signing key's)")
    p.add_argument("--checkpoints", action="append", default=[], help="exported checkpoints (JSONL) to check the log against")

    p = sub.add_parser("verify-export", help="check a signed export (GET /audit/export?signed=true)")
    _add_database_args(p)
    p.add_argument("file", help="the exported JSON Lines file")
    p.add_argument("--public-key", action="append", default=[], help="trusted public key PEM (repeatable; default: the signing key's)")

    p = sub.add_parser("export", help="write records as JSON Lines or CSV (the read itself is logged)")
    _add_database_args(p)
    _add_filter_args(p)
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--out", help="output file (default: standard output)")

    p = sub.add_parser("checkpoints", help="export the signed checkpoints for safekeeping outside the database")
    _add_database_args(p)
    p.add_argument("--out", help="output file (default: standard output)")
    p.add_argument("--now", action="store_true", help="write a checkpoint at the current head first")

    p = sub.add_parser("public-key", help="print the public key that checks the checkpoints")
    _add_database_args(p)

    p = sub.add_parser("purge", help="remove records older than the retention period (anchored at a checkpoint)")
    _add_database_args(p)
    p.add_argument("--retention-days", type=int, help=f"default: {AuditSettings().retention_days} (six years)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")



def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return _ACTIONS[args.action](args)
    except (AuditError, SQLAlchemyError, OSError) as error:
        print(f"ward audit {args.action}: {error}", file=sys.stderr)
        return 2


# --- actions -----------------------------------------------------------------------------------

def _settings_and_paths(args: argparse.Namespace):
    from gateway.audit.service import resolve_paths

    settings = AuditSettings()
    if getattr(args, "database_url", None):
        settings = settings.model_copy(update={"database_url": args.database_url})
    elif getattr(args, "data_dir", None):
        # An explicit data directory means its own SQLite file, whatever $WARD_DATABASE_URL says.
        settings = settings.model_copy(update={"database_url": f"sqlite:///{pathlib.Path(args.data_dir).resolve() / 'ward.db'}"})
    key = signing_key_path(getattr(args, "signing_key", None))
    if key:
        settings = settings.model_copy(update={"signing_key_path": key})
    return settings, resolve_paths(settings, getattr(args, "data_dir", None))


def _engine(url: str):
    """An engine on an existing log; never creates or migrates anything (verify must not write)."""
    from gateway.audit.service import create_audit_engine

    if url.startswith("sqlite:///"):
        path = pathlib.Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise AuditError(f"no database at {path}")
    return create_audit_engine(url)


def _verify(args: argparse.Namespace) -> int:
    from gateway.audit.service import trusted_keys
    from gateway.audit.verify import load_checkpoint_file, verify_chain

    settings, paths = _settings_and_paths(args)
    engine = _engine(paths.database_url)
    try:
        keys = trusted_keys(settings, paths, args.public_key)
        if not keys.keys:
            print("ward audit verify: no trusted public key: signatures cannot be checked (pass --public-key)", file=sys.stderr)
            return 2
        external = [cp for path in args.checkpoints for cp in load_checkpoint_file(path)]
        report = verify_chain(engine, keys, external)
    finally:
        engine.dispose()
    span = f"seq {report.first_seq}..{report.last_seq}" if report.entries else "empty"
    summary = (
        f"{report.entries} records ({span}), {report.checkpoints_checked} checkpoints, "
        f"{report.external_checked} exported checkpoints, head {'signed' if report.head_checked else 'NOT verified'}"
    )
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(f"OK: the audit log is intact: {summary}")
        return 0
    first = report.first_problem
    print(f"FAILED: first bad record: {first.describe()}")
    for problem in report.problems:
        if problem is not first:
            print(f"  also: {problem.describe()}")
    if report.truncated_problems:
        print(f"  ... and {report.truncated_problems} more")
    print(f"checked: {summary}")
    return 1


def _verify_export(args: argparse.Namespace) -> int:
    from gateway.audit.export import check_signed_export, describe_selection
    from gateway.audit.service import trusted_keys

    settings, paths = _settings_and_paths(args)
    keys = trusted_keys(settings, paths, args.public_key)
    if not keys.keys:
        print("ward audit verify-export: no trusted public key (pass --public-key)", file=sys.stderr)
        return 2
    with open(args.file, "rb") as handle:
        trailer, problem = check_signed_export(handle, keys)
    if problem is not None:
        print(f"FAILED: {args.file}: {problem}")
        return 1
    print(f"OK: {trailer['records']} records through seq {trailer['through_seq']}, signed {trailer['time']} "
          f"by key {trailer['key_id']}; {describe_selection(trailer.get('selection'))}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from gateway.audit.chain import ChainStore
    from gateway.audit.export import export_lines
    from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
    from gateway.audit.records import Actor, access_draft
    from gateway.audit.service import build_chain_store

    settings, paths = _settings_and_paths(args)
    engine = _engine(paths.database_url)
    try:
        store: ChainStore = build_chain_store(settings, paths, engine)
        reader = AuditReader(engine)
        flt = RecordFilter(
            since=args.since, until=args.until, team=args.team, subject=args.subject, model=args.model, status=args.status, kind=args.kind
        )
        query = {**flt.to_json(), "format": args.format, "out": args.out}
        through = reader.head_seq()
        # The read is recorded (and durable) before any record is written out.
        store.append([access_draft(Actor.local_operator(), "export", query, allowed=True, through_seq=through)])
        scope = ReadScope(teams=None, content=True, kinds=None)
        out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout
        try:
            for chunk in export_lines(reader.iter_records(flt, scope, through_seq=through), args.format):
                out.write(chunk)
        finally:
            if args.out:
                out.close()
    finally:
        engine.dispose()
    if args.out:
        print(f"exported records through seq {through} to {args.out}", file=sys.stderr)
    return 0


def _checkpoints(args: argparse.Namespace) -> int:
    from gateway.audit.service import build_chain_store
    from gateway.audit.verify import read_checkpoints

    settings, paths = _settings_and_paths(args)
    engine = _engine(paths.database_url)
    try:
        if args.now:
            build_chain_store(settings, paths, engine).checkpoint_if_due(force=True)
        with engine.connect() as conn:
            checkpoints = read_checkpoints(conn)
    finally:
        engine.dispose()
    text = "".join(json.dumps(cp.to_json(), sort_keys=True) + "\n" for cp in checkpoints)
    if args.out:
        pathlib.Path(args.out).write_text(text, encoding="utf-8")
        print(f"{len(checkpoints)} checkpoints written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _public_key(args: argparse.Namespace) -> int:
    from gateway.audit.signing import load_public_key, public_key_path_for, public_pem

    _, paths = _settings_and_paths(args)
    source = public_key_path_for(paths.signing_key)
    if not source.exists():
        source = paths.signing_key
    sys.stdout.write(public_pem(load_public_key(source)))
    return 0


def _purge(args: argparse.Namespace) -> int:
    from gateway.audit.records import Actor
    from gateway.audit.retention import purge_expired, retention_cutoff
    from gateway.audit.service import build_chain_store

    settings, paths = _settings_and_paths(args)
    days = settings.retention_days if args.retention_days is None else args.retention_days
    if days < 1:
        print("ward audit purge: --retention-days must be at least 1", file=sys.stderr)
        return 2
    engine = _engine(paths.database_url)
    try:
        store = build_chain_store(settings, paths, engine)
        result = purge_expired(store, retention_cutoff(days), Actor.local_operator(), dry_run=args.dry_run)
    finally:
        engine.dispose()
    if result.through_seq is None:
        print(f"nothing to purge: no checkpointed records older than {days} days (before {result.cutoff:%Y-%m-%d %H:%M} UTC)")
    elif args.dry_run:
        print(f"would remove {result.removed} records through seq {result.through_seq} (older than {days} days)")
    else:
        print(f"removed {result.removed} records through seq {result.through_seq}; purge recorded at seq {result.purge_seq}")
    return 0


_ACTIONS = {
    "verify": _verify,
    "verify-export": _verify_export,
    "export": _export,
    "checkpoints": _checkpoints,
    "public-key": _public_key,
    "purge": _purge,
}

