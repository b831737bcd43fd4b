"""``ward gateway --config FILE``: serve the OpenAI-compatible API with uvicorn.

The served app has identity, quotas and the audit log on (``build_app``): the gateway database is
migrated, API keys, OIDC tokens and client certificates are checked by ``gateway.auth`` (plus any
static ``api_keys`` of the config file), every request passes the quota and audit hooks, and the
admin and auditor APIs are mounted. ``--tls-cert --tls-key [--client-ca]`` serve HTTPS.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from typing import Any

from pydantic import ValidationError

from gateway.settings import ConfigFileError, GatewaySettings

log = logging.getLogger("ward.gateway")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gateway.auth.tls_server import add_tls_arguments

    parser.add_argument("--config", type=pathlib.Path, help="gateway YAML config (WARD_* env vars override it)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8000)")
    parser.add_argument("--data-dir", type=pathlib.Path, help="where the default SQLite database lives")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument(
        "--drain-grace",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may finish before they are ended (default 30; shutdown.grace_s)",
    )
    add_tls_arguments(parser)


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    """The settings for these flags: flags, then WARD_* env vars, then the config file.

    Raises ConfigFileError, pydantic's ValidationError, or ValueError for incomplete TLS flags.
    """
    from gateway.auth.tls_server import tls_settings_from_args

    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in ("host", "port", "data_dir") if getattr(args, name) is not None
    }
    if getattr(args, "drain_grace", None) is not None:
        overrides["shutdown"] = {"grace_s": args.drain_grace}  # merged into the file's section
    settings = GatewaySettings.load(args.config, **overrides)
    tls = tls_settings_from_args(args)
    if tls is not None:
        auth = settings.auth.model_copy(update={"tls": tls})
        settings = settings.model_copy(update={"auth": auth})
    return settings


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except (ConfigFileError, ValidationError, ValueError) as exc:
        print(f"ward gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2

    from sqlalchemy.exc import SQLAlchemyError

    from gateway.audit.errors import SigningKeyError
    from gateway.quota.config_file import QuotaConfigError
    from gateway.workers.channels import InsecureWorkerChannel

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = build_app(settings)
    except (InsecureWorkerChannel, SigningKeyError, QuotaConfigError) as exc:
        print(f"ward gateway: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]  # the driver's reason, no SQL
        print(f"ward gateway: the gateway database cannot be used: {detail}", file=sys.stderr)
        return 1
    serve(app, settings, log_level=args.log_level)
    return 0


class ConfiguredKeysThenIdentity:
    """Authenticates with the config file's static ``api_keys`` first, else with the identity layer.

    Static keys are compared in constant time against all of them (``StaticKeyAuthenticator``); a
    request they do not match is the identity layer's to accept or refuse.
    """

    def __init__(self, static: Any, identity: Any) -> None:
        self.static = static
        self.identity = identity

    async def authenticate(self, request: Any) -> Any:
        from gateway.auth.errors import AuthenticationError

        try:
            return await self.static.authenticate(request)
        except AuthenticationError:
            return await self.identity.authenticate(request)

    async def shutdown(self) -> None:
        await self.identity.shutdown()


def build_app(settings: GatewaySettings, *, registry: Any = None) -> Any:
    """The gateway app ``ward gateway`` serves, with identity, quotas and the audit log on.

    The gateway database is migrated; identity (API keys, OIDC, client certificates, plus the config
    file's static ``api_keys``) authenticates; the request hooks are quotas then audit
    (``gateway.governance``); the admin API (teams, keys, quotas, usage) and the auditor API are
    mounted, with the model approval API; each caller's team is held to its model allow-list and its
    Generate calls carry the team's scheduling class and weight; admin changes of teams, keys, quotas
    and policy, and every admin read, go into the audit log; the quota, audit-writer and
    certificate-expiry metrics join the app's Prometheus registry. ``app.state`` holds ``database``,
    ``audit_services`` and ``quotas``.

    Raises InsecureWorkerChannel when a remote worker has no TLS configured, SigningKeyError or
    QuotaConfigError when the audit key or the quota file cannot be used.
    """
    from prometheus_client import CollectorRegistry

    from gateway.app import create_app
    from gateway.auth.factory import build_identity
    from gateway.certificate_metrics import CertificateExpiryCollector
    from gateway.auth.stores import TeamStore
    from gateway.db import create_db_engine, upgrade_to_head
    from gateway.console.factory import build_console
    from gateway.governance import build_governance
    from gateway.static_auth import StaticKeyAuthenticator

    url = settings.resolved_database_url()
    upgrade_to_head(url)
    engine = create_db_engine(url)
    teams = TeamStore(engine)
    for team in sorted(set(settings.api_keys.values())):
        teams.ensure(team)  # the config file's static keys name teams the admin API can then manage
    governance = build_governance(settings, database_url=url, engine=engine, teams=teams)
    identity = build_identity(settings.auth, engine, recorder=governance.audit.log)
    console = build_console(settings)
    readers = console_read_routers(settings)
    authenticator: Any = identity.authenticator
    if settings.api_keys:
        static = StaticKeyAuthenticator({key.get_secret_value(): team for key, team in settings.api_keys.items()},
                                        teams=identity.authenticator.teams)
        authenticator = ConfiguredKeysThenIdentity(static, identity.authenticator)
    registry = registry if registry is not None else CollectorRegistry()
    for collector in [*governance.collectors, CertificateExpiryCollector(settings.auth)]:
        registry.register(collector)
    app = create_app(
        settings,
        authenticator=authenticator,
        hooks=governance.hooks,
        routers=[*identity.routers, *governance.routers, *readers, *(console.routers if console else [])],
        error_converters=governance.error_converters,
        registry=registry,
        policy=governance.policy,
    )
    for middleware, options in [*identity.middleware, *governance.middleware, *(console.middleware if console else [])]:
        app.add_middleware(middleware, **options)
    app.state.database = engine
    app.state.audit_services = governance.audit  # read by the auditor router
    app.state.quotas = governance.quotas
    return app


def console_read_routers(settings: GatewaySettings) -> list[Any]:
    """The read APIs the console draws from besides the admin and auditor APIs: usage over time
    (``/admin/usage/series``) and the audit log's verification (``/audit/verification``)."""
    from gateway.audit.router import services_from_app_state
    from gateway.audit.service import resolve_paths, trusted_keys
    from gateway.audit.usage_series import engine_from_app_state, make_usage_series_router
    from gateway.audit.verification import make_verification_router
    from gateway.auth.dependencies import current_principal

    trusted = trusted_keys(settings.audit, resolve_paths(settings.audit, settings.data_dir))
    return [
        make_usage_series_router(principal=current_principal, engine=engine_from_app_state),
        make_verification_router(principal=current_principal, services=services_from_app_state, trusted=trusted),
    ]


def uvicorn_tls_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn's ``ssl_*`` arguments for ``auth.tls`` (empty: plain HTTP)."""
    return {key: value for key, value in _server_tls_options(settings).items() if key.startswith("ssl_")}


def _server_tls_options(settings: GatewaySettings) -> dict[str, Any]:
    from gateway.auth.tls_server import uvicorn_tls_options as tls_options

    tls = settings.auth.tls
    return tls_options(tls) if tls is not None else {}


def server_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn's loop and HTTP implementation, then TLS (which brings its own h11 protocol)."""
    return {"loop": settings.loop, "http": settings.http, **_server_tls_options(settings)}


# The youngest generation's threshold under load (Python's own: 700). A governed request leaves
# some hundred container objects alive while it waits on the worker and the audit commit, so with 16
# requests in flight a young collection ran every few requests and mostly re-scanned live requests:
# 3-7% of the gateway's CPU at 16 clients on the 2-core box (docs/performance.md). Garbage cycles
# wait a little longer; memory stays bounded by this many young objects.
YOUNG_GC_THRESHOLD = 10_000


def prepare_heap() -> None:
    """Before serving: the start-up heap frozen out of the collector's scans, the young generation
    collected less often (``YOUNG_GC_THRESHOLD``; the older generations' thresholds as they were)."""
    import gc

    # Everything built so far (modules, the app, its layers) lives as long as the process: moved out
    # of the collector's sight, a full collection no longer scans it and no longer stalls every
    # request in flight for tens of milliseconds (measured: 65-75 ms on the 2-core box, about once a
    # second under load; see docs/performance.md).
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


def serve(app: Any, settings: GatewaySettings, *, log_level: str = "info") -> None:
    """Serves ``app`` with uvicorn on the settings' address until SIGTERM/SIGINT, then drains
    (``shutdown.grace_s``, see gateway.http.server) and returns.

    With ``auth.tls``, HTTPS through ``PeerCertH11Protocol``, which hands verified client
    certificates to the identity layer.
    """
    import uvicorn

    from gateway.http.server import CUT_SETTLE_S, DrainingServer

    prepare_heap()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=settings.access_log,
        server_header=False,
        # The drain has ended every request by then; this only bounds a client that stopped reading.
        timeout_graceful_shutdown=int(CUT_SETTLE_S),
        **server_options(settings),
    )
    DrainingServer(config, app.state.shutdown, settings.shutdown.grace_s).run()
