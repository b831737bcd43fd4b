"""The gateway terminating TLS itself, with optional client certificates (`--tls-cert --tls-key --client-ca`).

uvicorn does not hand the peer certificate to the application. PeerCertH11Protocol fixes that at the
connection: once the handshake is done it reads the verified certificate from the SSL object and wraps
the app for that connection so every request's scope carries the ASGI TLS extension
(`scope["extensions"]["tls"]`, with `client_cert_chain` as PEM). gateway.auth.mtls reads it from there.
"""
from __future__ import annotations

import argparse
import asyncio
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.auth.settings import TLSServerSettings


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection, or None on plaintext."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": ssl_object.version(),
        "cipher_suite": cipher[0] if cipher else None,
    }


class _WithTLSExtension:
    """The app, seen from one TLS connection: adds that connection's TLS extension to each scope."""

    def __init__(self, app: Any, tls: dict[str, Any]):
        self.app = app
        self.tls = tls

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": self.tls}}
        await self.app(scope, receive, send)


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus the peer certificate in the ASGI scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _WithTLSExtension(self.app, tls)


def uvicorn_tls_options(tls: TLSServerSettings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.Config (or uvicorn.run) that serve HTTPS with these settings."""
    options: dict[str, Any] = {
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "http": PeerCertH11Protocol,
    }
    if tls.client_ca_file:
        options["ssl_ca_certs"] = tls.client_ca_file
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED if tls.client_cert == "required" else ssl.CERT_OPTIONAL
    return options


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The gateway's TLS flags, for `ward gateway` and `ward up`."""
    group = parser.add_argument_group("TLS")
    group.add_argument("--tls-cert", help="PEM certificate (chain) the gateway serves HTTPS with")
    group.add_argument("--tls-key", help="PEM private key of --tls-cert")
    group.add_argument("--client-ca", help="PEM CA bundle: require client certificates issued by it (mTLS)")
    group.add_argument(
        "--client-cert", choices=("required", "optional"), default="required",
        help="with --client-ca: refuse connections without a certificate (required) or let tokens and keys in too",
    )


def tls_settings_from_args(args: argparse.Namespace) -> TLSServerSettings | None:
    """TLSServerSettings from the flags above; None when TLS is not asked for. Raises ValueError when incomplete."""
    if not (args.tls_cert or args.tls_key or args.client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together (and --client-ca needs both)")
    return TLSServerSettings(
        cert_file=args.tls_cert, key_file=args.tls_key, client_ca_file=args.client_ca, client_cert=args.client_cert
    )
