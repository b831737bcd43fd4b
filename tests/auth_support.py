"""Shared pieces of the identity tests: fresh databases, a minimal gateway-shaped app, a real uvicorn process.

Run as a script (`python auth_support.py CONFIG.json`) it serves the minimal app with uvicorn, TLS
included when the config asks for it, exactly as the gateway CLI would.
"""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from fastapi import Depends, FastAPI

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.auth.dependencies import CurrentPrincipal, require_roles  # noqa: E402
from gateway.auth.factory import Identity, build_identity  # noqa: E402
from gateway.auth.http_errors import install_auth_error_handlers  # noqa: E402
from gateway.auth.principal import Principal, Role  # noqa: E402
from gateway.auth.settings import AuthSettings  # noqa: E402
from gateway.db import create_db_engine, upgrade_to_head  # noqa: E402
from ports import free_port  # noqa: E402

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def sqlite_url(directory: pathlib.Path) -> str:
    url = f"sqlite:///{directory / 'ward-auth.db'}"
    upgrade_to_head(url)
    return url


@contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database, dropped afterwards. Fails (never skips) without a server."""
    name = f"ward_auth_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade_to_head(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def principal_view(p: Principal) -> dict:
    return {
        "subject": p.subject,
        "team": p.team,
        "roles": sorted(r.value for r in p.roles),
        "method": p.auth_method.value,
        "cache_salt": p.cache_salt,
        "cert_subject": p.cert_subject,
    }


def make_app(identity: Identity) -> FastAPI:
    """A gateway-shaped app: an inference route, an audit route, whoami, and the identity's admin router."""
    app = FastAPI()
    app.state.authenticator = identity.authenticator
    install_auth_error_handlers(app)
    for router in identity.routers:
        app.include_router(router)
    for cls, kwargs in identity.middleware:
        app.add_middleware(cls, **kwargs)

    @app.post("/v1/chat/completions")
    async def chat(principal: Principal = Depends(require_roles(Role.USER))) -> dict:
        return principal_view(principal)

    @app.get("/v1/audit/records")
    async def audit(principal: Principal = Depends(require_roles(Role.AUDITOR))) -> dict:
        return {"object": "list", "data": [], "reader": principal.subject}

    @app.get("/whoami")
    async def whoami(principal: CurrentPrincipal) -> dict:
        return principal_view(principal)

    return app


class ServedApp:
    """The minimal app in a real uvicorn process (see main below)."""

    def __init__(self, workdir: pathlib.Path, settings: AuthSettings, database_url: str):
        self.workdir = workdir
        self.port = free_port()
        self.settings = settings
        self.database_url = database_url
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"app-{self.port}.log"

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServedApp":
        cfg = self.workdir / f"app-{self.port}.json"
        cfg.write_text(json.dumps({"port": self.port, "database_url": self.database_url, "auth": self.settings.model_dump(mode="json")}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, __file__, str(cfg)], stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the app exited:\n" + self.log_path.read_text()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the app did not start in time")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def main(config_path: str) -> None:
    import uvicorn

    from gateway.auth.tls_server import uvicorn_tls_options

    cfg = json.loads(pathlib.Path(config_path).read_text())
    settings = AuthSettings.model_validate(cfg["auth"])
    identity = build_identity(settings, create_db_engine(cfg["database_url"]))
    options = uvicorn_tls_options(settings.tls) if settings.tls else {}
    uvicorn.run(make_app(identity), host="127.0.0.1", port=cfg["port"], log_level="info", **options)


if __name__ == "__main__":
    main(sys.argv[1])
