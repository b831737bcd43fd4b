"""Shared pieces of the admin-policy tests: the app ``ward gateway`` serves (``gateway.cli.build_app``:
identity, quotas, audit, model policy) in this event loop, in front of in-process fake gRPC workers, on
a real SQLite or PostgreSQL database; teams and keys; the audit log's records."""
from __future__ import annotations

import contextlib
import pathlib
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from auth_support import postgres_url, sqlite_url
from fake_worker import FakeConfig, FakeWorker
from gateway.auth.principal import Role
from gateway.auth.stores import KeyStore, TeamStore
from gateway.db import create_db_engine

ADMIN_KEY = "governance-admin-key-0123456789abcdef"
CHAT_MODEL, PILOT_MODEL, EMBED_MODEL = "fake-chat", "fake-pilot", "fake-embed"


@contextlib.contextmanager
def database(kind: str, directory: pathlib.Path):
    """A fresh, migrated database URL: SQLite in ``directory`` or a scratch PostgreSQL database."""
    if kind == "sqlite":
        yield sqlite_url(directory)
    else:
        with postgres_url() as url:
            yield url


def unique_team(prefix: str = "team") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def make_team(url: str, team: str, *roles: Role | str) -> dict[str, str]:
    """Creates ``team`` and one key per role; returns role -> key text."""
    engine = create_db_engine(url)
    try:
        TeamStore(engine).ensure(team)
        return {Role(r).value: KeyStore(engine).create(team, Role(r), description=f"test {Role(r).value}")[1] for r in roles}
    finally:
        engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(model: str = CHAT_MODEL, content: str = "summarise the handover note", **fields: Any) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 3, **fields}


@dataclass
class Gateway:
    app: Any
    client: httpx.AsyncClient
    url: str
    workers: dict[str, FakeWorker]
    data_dir: pathlib.Path
    seen: list[httpx.Response] = field(default_factory=list)

    def sent(self, model: str = CHAT_MODEL) -> list:
        """The GenerateRequests the worker of ``model`` received."""
        return self.workers[model].servicer.generate_requests


@contextlib.asynccontextmanager
async def fake_workers() -> AsyncIterator[dict[str, FakeWorker]]:
    async with (
        FakeWorker(FakeConfig(model=CHAT_MODEL, worker_id="chat")) as chat_worker,
        FakeWorker(FakeConfig(model=PILOT_MODEL, worker_id="pilot")) as pilot_worker,
        FakeWorker(FakeConfig(model=EMBED_MODEL, task="embed", worker_id="embed")) as embed_worker,
    ):
        yield {CHAT_MODEL: chat_worker, PILOT_MODEL: pilot_worker, EMBED_MODEL: embed_worker}


@contextlib.asynccontextmanager
async def governed_gateway(
    url: str,
    data_dir: pathlib.Path,
    workers: Mapping[str, FakeWorker],
    *,
    quota_file: pathlib.Path | None = None,
    refresh_s: float = 0.1,
    console: Mapping[str, Any] | None = None,
) -> AsyncIterator[Gateway]:
    """The served app (build_app) on database ``url`` with its lifespan running, and a client."""
    from gateway.cli import build_app
    from gateway.settings import GatewaySettings

    quota: dict[str, Any] = {"override_refresh_s": refresh_s, "reload_check_s": 0.05,
                             "overrides_file": str(data_dir / "quota" / "overrides.json")}
    if quota_file is not None:
        quota["config_file"] = str(quota_file)
    settings = GatewaySettings(
        database_url=url,
        data_dir=data_dir,
        models={name: {"workers": [w.address]} for name, w in workers.items()},
        auth={"admin_key": ADMIN_KEY, "api_key_cache_ttl_s": 0, "team_cache_ttl_s": 0},
        routing={"poll_interval_s": 0.1, "poll_timeout_s": 0.5, "dead_after_s": 1.0},
        quota=quota,
        console=dict(console or {}),
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        assert await app.state.ward.pool.wait_until_ready(5.0, every_worker=True), "fake workers never became ready"
        gateway = Gateway(app, None, url, dict(workers), data_dir)  # type: ignore[arg-type]

        async def remember(response: httpx.Response) -> None:
            gateway.seen.append(response)

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10,
                                     event_hooks={"response": [remember]}) as client:
            gateway.client = client
            yield gateway
    app.state.database.dispose()


def audit_records(url: str, **query: Any) -> list[dict]:
    """Every record of the log (with content) matching ``query`` (RecordFilter fields)."""
    from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(url)
    try:
        scope = ReadScope(teams=None, content=True, kinds=None)
        return list(AuditReader(engine).iter_records(RecordFilter(**query), scope, through_seq=10**12))
    finally:
        engine.dispose()


def admin_entries(url: str, team: str | None = None, action: str | None = None) -> list[dict]:
    entries = audit_records(url, kind="admin", team=team)
    return [e for e in entries if action is None or e["data"]["action"] == action]


@dataclass
class Done:
    """What a `ward` command did: its exit status and output."""

    returncode: int
    stdout: str
    stderr: str


def ward_here(capsys: Any, *args: str) -> Done:
    """`ward ...` run in this process (``ward.cli.main``: the same parsing and code path as the command,
    without a new interpreter's start-up); the environment is the test's (monkeypatch WARD_DATA_DIR)."""
    from ward.cli import main

    try:
        status = main(list(args))
    except SystemExit as exit_:  # argparse refusing a value
        status = exit_.code
    out = capsys.readouterr()
    return Done(status, out.out, out.err)


def records_of(url: str, request_id: str) -> list[dict]:
    """Every record naming the request ``request_id`` (its request record, or admin/access entries)."""
    return [r for r in audit_records(url) if r["id"] == request_id or r.get("request_id") == request_id]
