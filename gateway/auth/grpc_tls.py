"""The gateway side of the gateway-to-worker gRPC link: TLS with the gateway's client certificate.

Workers configured with a client CA accept calls only from gateway certificates, so nobody on the
network can reach the engine around identity, quotas and audit. gateway.workers.channels opens the
channels (and refuses plaintext to non-loopback workers); this module owns the credentials.
"""
from __future__ import annotations

import pathlib

import grpc

from gateway.auth.settings import WorkerTLSSettings


def gateway_channel_credentials(tls: WorkerTLSSettings) -> grpc.ChannelCredentials:
    """Channel credentials: trust the workers' CA, present the gateway's certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=pathlib.Path(tls.ca_file).read_bytes(),
        private_key=pathlib.Path(tls.key_file).read_bytes(),
        certificate_chain=pathlib.Path(tls.cert_file).read_bytes(),
    )


def gateway_channel_options(tls: WorkerTLSSettings) -> list[tuple[str, str]]:
    """Channel options that go with the credentials: the name to check the worker certificate against."""
    return [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
