"""Wiring the audit layer from settings: where things live, and the objects the gateway holds.

    services = build_audit_services(settings.audit)      # migrates the database, loads the key
    await services.log.start()
    app.state.audit_services = services                  # read by the auditor router
    ...
    await services.log.close()
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from sqlalchemy import Engine, select

from gateway.audit.capture import CaptureLevel, Redactor
from gateway.audit.chain import HEAD, ChainStore, CheckpointPolicy
from gateway.audit.errors import SigningKeyError
from gateway.audit.log import AuditLog
from gateway.audit.reader import AuditReader
from gateway.audit.settings import AuditSettings
from gateway.audit.signing import Signer, TrustedKeys, load_public_key, public_key_path_for
from gateway.audit.spool import Spool
from gateway.audit.team_levels import TeamCaptureLevels
from gateway.db.engine import create_db_engine, database_url, default_data_dir, upgrade_to_head
from gateway.db.models_audit import CHAIN_HEAD_ID


@dataclass(frozen=True)
class AuditPaths:
    database_url: str
    signing_key: pathlib.Path
    spool_dir: pathlib.Path


def resolve_paths(settings: AuditSettings, data_dir: str | os.PathLike | None = None) -> AuditPaths:
    """Where the database, the signing key and the spool are, for these settings and data directory."""
    base = pathlib.Path(data_dir) if data_dir is not None else default_data_dir()
    return AuditPaths(
        database_url=database_url(data_dir=base, url=settings.database_url),
        signing_key=pathlib.Path(settings.signing_key_path) if settings.signing_key_path else base / "audit" / "checkpoint-key.pem",
        spool_dir=pathlib.Path(settings.spool_dir) if settings.spool_dir else base / "audit" / "spool",
    )


def create_audit_engine(url: str, connect_timeout_s: float = 5.0) -> Engine:
    """An engine for the audit log: the shared factory, plus a bounded connect time on PostgreSQL."""
    if url.startswith("sqlite"):
        return create_db_engine(url)
    return create_db_engine(url, connect_args={"connect_timeout": max(1, int(connect_timeout_s))})


def trusted_keys(settings: AuditSettings, paths: AuditPaths, extra: list[str] | None = None) -> TrustedKeys:
    """The public keys verification trusts: given files, else the signing key's public half, plus settings'."""
    files = list(extra or [])
    if not files:
        public = public_key_path_for(paths.signing_key)
        if public.exists():
            files.append(str(public))
        elif paths.signing_key.exists():
            files.append(str(paths.signing_key))
    files += settings.trusted_public_keys
    return TrustedKeys.from_keys([load_public_key(f) for f in files])


@dataclass
class AuditServices:
    """What the gateway holds: the writer and the reader (the auditor router takes both)."""

    log: AuditLog
    reader: AuditReader
    engine: Engine


def load_signer(engine: Engine, key_path: pathlib.Path) -> Signer:
    """The signing key at key_path; a new one is made only for a log that has no entries yet.

    Raises SigningKeyError when the key is missing but the log already holds entries: a made-up key
    would sign the chain head with a key nobody trusts (copy the existing key to this host instead).
    """
    if key_path.exists():
        return Signer.load(key_path)
    with engine.connect() as conn:
        head_seq = conn.execute(select(HEAD.c.last_seq).where(HEAD.c.id == CHAIN_HEAD_ID)).scalar_one()
    if head_seq:
        raise SigningKeyError(
            f"the audit signing key {key_path} does not exist, but the log already holds {head_seq} entries: "
            "use the key that signed them (signing_key_path / --signing-key)"
        )
    return Signer.load_or_create(key_path)


def build_chain_store(settings: AuditSettings, paths: AuditPaths, engine: Engine) -> ChainStore:
    signer = load_signer(engine, paths.signing_key)
    policy = CheckpointPolicy(every_records=settings.checkpoint_every_records, every_s=settings.checkpoint_every_s)
    return ChainStore(engine, signer, policy, write_timeout_s=settings.write_timeout_s)


def build_audit_services(
    settings: AuditSettings, data_dir: str | os.PathLike | None = None, *, migrate: bool = True
) -> AuditServices:
    """The audit log and reader for settings: migrates the database, loads or creates the signing key.

    The log still has to be started (``await services.log.start()``) and closed; closing disposes the engine.
    """
    paths = resolve_paths(settings, data_dir)
    if migrate:
        upgrade_to_head(paths.database_url)
    engine = create_audit_engine(paths.database_url, settings.write_timeout_s)
    store = build_chain_store(settings, paths, engine)
    levels = TeamCaptureLevels(
        engine,
        default=CaptureLevel(settings.default_capture_level),
        unauthenticated=CaptureLevel(settings.unauthenticated_capture_level),
        ttl_s=settings.capture_cache_ttl_s,
    )
    log = AuditLog(
        store,
        capture_levels=levels,
        redactor=Redactor(settings.redaction_patterns),
        spool=Spool(paths.spool_dir) if settings.on_database_outage == "spool" else None,
        max_batch=settings.max_batch,
        drain_interval_s=settings.spool_drain_interval_s,
        on_close=engine.dispose,
        inline_alone=engine.dialect.name == "sqlite",  # a local file: no network stall on the event loop
    )
    return AuditServices(log=log, reader=AuditReader(engine), engine=engine)
