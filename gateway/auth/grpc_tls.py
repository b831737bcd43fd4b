"""The gateway side of the gateway-to-worker gRPC link: TLS with the gateway's client certificate.

Workers configured with a client CA accept calls only from gateway certificates, so nobody on the
network can reach the engine around identity, quotas and audit. Plaintext is allowed to loopback
workers (`ward up`) and elsewhere only when explicitly marked insecure.
"""
from __future__ import annotations

import grpc
import grpc.aio

from gateway.auth.settings import WorkerTLSSettings, is_loopback_host


class InsecureWorkerChannel(ValueError):
    """Plaintext gRPC to a non-loopback worker without `insecure_worker_channel` set."""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def gateway_channel_credentials(tls: WorkerTLSSettings) -> grpc.ChannelCredentials:
    """Channel credentials: trust the workers' CA, present the gateway's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file),
        certificate_chain=_read(tls.cert_file),
    )


def _host_of(target: str) -> str:
    """The host of a `host:port` / `[v6]:port` / `dns:///host:port` target."""
    target = target.split("///", 1)[-1]
    if target.startswith("["):
        return target[1 : target.index("]")]
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


def open_worker_channel(
    target: str,
    tls: WorkerTLSSettings | None,
    *,
    allow_insecure: bool = False,
    options: list[tuple[str, object]] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to a worker: TLS when configured; plaintext only to loopback or when allowed."""
    opts = list(options or [])
    if tls is not None:
        if tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        return grpc.aio.secure_channel(target, gateway_channel_credentials(tls), options=opts)
    if not (allow_insecure or is_loopback_host(_host_of(target))):
        raise InsecureWorkerChannel(
            f"refusing plaintext gRPC to non-loopback worker {target}: configure auth.worker_tls "
            "(CA, gateway certificate and key) or set insecure_worker_channel explicitly"
        )
    return grpc.aio.insecure_channel(target, options=opts)
