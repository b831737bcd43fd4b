"""gRPC channels to workers: one long-lived channel per worker address, TLS when configured.

Plaintext is accepted only to loopback addresses unless ``auth.insecure_worker_channel`` says
otherwise, so prompts never cross a network unencrypted by accident.
"""

from __future__ import annotations

import grpc

from gateway.auth.grpc_tls import gateway_channel_credentials, gateway_channel_options
from gateway.auth.settings import WorkerTLSSettings, is_loopback_host
from proto.batching import MESSAGE_LIMIT_BYTES

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),  # large embedding batches
    ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
    # A restarted worker is found again within a couple of seconds (gRPC's default backoff grows to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),  # the gateway retries on another worker itself
)


class InsecureWorkerChannel(ValueError):
    """A plaintext channel to a non-loopback worker was refused."""


def worker_host(address: str) -> str:
    """The host part of ``host:port`` (brackets of an IPv6 literal removed)."""
    return address.rpartition(":")[0].strip("[]")


def open_channel(
    address: str, *, tls: WorkerTLSSettings | None = None, allow_insecure: bool = False
) -> grpc.aio.Channel:
    """A channel to ``address``; raises InsecureWorkerChannel for plaintext to another host."""
    if tls is not None:
        options = [*CHANNEL_OPTIONS, *gateway_channel_options(tls)]
        return grpc.aio.secure_channel(address, gateway_channel_credentials(tls), options=options)
    if not allow_insecure and not is_loopback_host(worker_host(address)):
        raise InsecureWorkerChannel(
            f"worker {address} is not on this host: configure auth.worker_tls "
            "(or set auth.insecure_worker_channel, never in production)"
        )
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
