"""The gateway side of the worker link: TLS credentials with the gateway's client certificate.

A stand-in worker (a real grpc.aio server with the Worker service, TLS and required client
certificates) answers Health; only a caller holding a gateway certificate from the trusted CA gets in.
"""
from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from auth_support import free_port
from auth_tls_certs import TestPKI
from gateway.auth.grpc_tls import gateway_channel_credentials, gateway_channel_options
from gateway.auth.settings import WorkerTLSSettings
from proto.ward.worker.v1 import worker_pb2, worker_pb2_grpc


class HealthOnly(worker_pb2_grpc.WorkerServicer):
    async def Health(self, request, context):
        return worker_pb2.HealthResponse(live=True, ready=True, detail="ok")


async def _health_through(
    pki: TestPKI, tls: WorkerTLSSettings | None, *, bare_credentials: grpc.ChannelCredentials | None = None
) -> worker_pb2.HealthResponse:
    """Health of a TLS worker that requires client certificates, through a channel with the gateway's
    credentials for `tls`, or with bare_credentials when given (a caller that is not a gateway)."""
    port = free_port()
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(HealthOnly(), server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key_pem(), pki.server.cert_pem())],
        root_certificates=pki.ca.ca_file.read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    try:
        target = f"127.0.0.1:{port}"
        if bare_credentials is not None:
            channel = grpc.aio.secure_channel(target, bare_credentials)
        elif tls is not None:
            channel = grpc.aio.secure_channel(target, gateway_channel_credentials(tls), options=gateway_channel_options(tls))
        else:
            channel = grpc.aio.insecure_channel(target)
        async with channel:
            return await worker_pb2_grpc.WorkerStub(channel).Health(worker_pb2.HealthRequest(), timeout=5)
    finally:
        await server.stop(None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return TestPKI(tmp_path_factory.mktemp("grpc-pki"))


def settings_for(pki: TestPKI, client) -> WorkerTLSSettings:
    return WorkerTLSSettings(ca_file=str(pki.ca.ca_file), cert_file=str(client.cert), key_file=str(client.key))


def test_gateway_certificate_reaches_a_tls_worker(pki):
    reply = asyncio.run(_health_through(pki, settings_for(pki, pki.gateway)))
    assert reply.ready and reply.detail == "ok"


def test_server_name_override_checks_the_worker_certificate(pki):
    tls = settings_for(pki, pki.gateway).model_copy(update={"server_name": "localhost"})
    assert asyncio.run(_health_through(pki, tls)).live
    wrong = settings_for(pki, pki.gateway).model_copy(update={"server_name": "worker.elsewhere.test"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_health_through(pki, wrong))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_call_without_a_gateway_certificate_is_refused(pki):
    # TLS that trusts the worker's CA, but the caller presents no client certificate
    no_client_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca.ca_file.read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_health_through(pki, None, bare_credentials=no_client_cert))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_call_to_a_tls_worker_fails(pki):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_health_through(pki, None))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_call_with_a_certificate_from_another_ca_is_refused(pki):
    tls = settings_for(pki, pki.other_gateway)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_health_through(pki, tls))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
