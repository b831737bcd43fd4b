"""``ward gateway --config FILE``: serve the OpenAI-compatible API with uvicorn."""

from __future__ import annotations

import argparse
import logging
import pathlib
import ssl
import sys
from typing import Any

from pydantic import ValidationError

from gateway.settings import ConfigFileError, GatewaySettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=pathlib.Path, help="gateway YAML config (WARD_* env vars override it)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8000)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in ("host", "port") if getattr(args, name) is not None}
    try:
        settings = GatewaySettings.load(args.config, **overrides)
    except (ConfigFileError, ValidationError) as exc:
        print(f"ward gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2

    from gateway.app import create_app
    from gateway.workers.channels import InsecureWorkerChannel

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(settings)
    except InsecureWorkerChannel as exc:
        print(f"ward gateway: {exc}", file=sys.stderr)
        return 2
    serve(app, settings, log_level=args.log_level)
    return 0


def uvicorn_tls_options(settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn's TLS arguments for ``auth.tls`` (empty: plain HTTP)."""
    tls = settings.auth.tls
    if tls is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
    if tls.client_ca_file:
        options["ssl_ca_certs"] = tls.client_ca_file
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED if tls.client_cert == "required" else ssl.CERT_OPTIONAL
    return options


def serve(app: Any, settings: GatewaySettings, *, log_level: str = "info") -> None:
    """Serves ``app`` (from ``create_app``) with uvicorn on the settings' address until SIGTERM/SIGINT."""
    import uvicorn

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=settings.access_log,
        server_header=False,
        timeout_graceful_shutdown=10,
        **uvicorn_tls_options(settings),
    )
