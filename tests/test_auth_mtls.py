"""Client certificates: the gateway's own TLS (a real uvicorn process with the peer-certificate hook),
and certificates forwarded by an ingress (trusted only from configured proxy addresses)."""
from __future__ import annotations

import ipaddress
import ssl
import urllib.parse

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from auth_support import ServedApp, sqlite_url
from auth_tls_certs import TestPKI
from gateway.auth.mtls import ForwardedCertHeaderGuard, parse_forwarded_cert
from gateway.auth.settings import AuthSettings, CertIdentity, MTLSSettings, TLSServerSettings
from gateway.auth.stores import KeyStore, TeamStore
from gateway.auth.tls_server import PeerCertH11Protocol, uvicorn_tls_options
from gateway.db import create_db_engine

IDENTITIES = [
    CertIdentity(san_dns="lab.ward.test", team="lab", name="svc:lab-results"),
    CertIdentity(subject="CN=pacs-bridge, O=Ward Test Hospital", team="radiology"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    work = tmp_path_factory.mktemp("mtls")
    pki = TestPKI(work / "pki")
    certs = {
        "lab": pki.ca.issue("lab-results", client=True, dns=("lab.ward.test",)),
        "pacs": pki.ca.issue("pacs-bridge", client=True),
        "unmapped": pki.ca.issue("stranger", client=True, dns=("stranger.ward.test",)),
        "foreign_lab": pki.other_ca.issue("lab-results", client=True, dns=("lab.ward.test",)),
        "expired_lab": pki.ca.issue("lab-expired", client=True, dns=("lab.ward.test",), days_from_now=-2),
        "future_lab": pki.ca.issue("lab-future", client=True, dns=("lab.ward.test",), days_from_now=2),
    }
    url = sqlite_url(work)
    engine = create_db_engine(url)
    for team in ("lab", "radiology"):
        TeamStore(engine).create(team)
    _, key = KeyStore(engine).create("lab")
    engine.dispose()
    return {"work": work, "pki": pki, "certs": certs, "url": url, "key": key}


def tls_client(pki: TestPKI, cert=None) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki.ca.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return httpx.Client(verify=ctx, timeout=5)


@pytest.fixture(scope="module")
def mtls_gateway(env):
    pki = env["pki"]
    settings = AuthSettings(
        tls=TLSServerSettings(cert_file=str(pki.server.cert), key_file=str(pki.server.key), client_ca_file=str(pki.ca.ca_file)),
        mtls=MTLSSettings(identities=IDENTITIES),
    )
    with ServedApp(env["work"], settings, env["url"]) as app:
        yield app


def test_certificate_san_maps_to_a_service_principal(env, mtls_gateway):
    with tls_client(env["pki"], env["certs"]["lab"]) as c:
        r = c.post(f"{mtls_gateway.url}/v1/chat/completions")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["subject"], body["team"], body["method"]) == ("svc:lab-results", "lab", "mtls")
    assert body["cert_subject"] == "CN=lab-results,O=Ward Test Hospital"


def test_certificate_subject_maps_to_a_service_principal(env, mtls_gateway):
    with tls_client(env["pki"], env["certs"]["pacs"]) as c:
        r = c.post(f"{mtls_gateway.url}/v1/chat/completions")
    assert r.status_code == 200 and r.json()["team"] == "radiology"
    assert r.json()["subject"] == "CN=pacs-bridge,O=Ward Test Hospital"


def test_unmapped_certificate_is_forbidden(env, mtls_gateway):
    with tls_client(env["pki"], env["certs"]["unmapped"]) as c:
        r = c.post(f"{mtls_gateway.url}/v1/chat/completions")
    assert r.status_code == 403 and r.json()["error"]["code"] == "certificate_not_mapped"


def test_bearer_credential_wins_over_the_certificate(env, mtls_gateway):
    with tls_client(env["pki"], env["certs"]["pacs"]) as c:
        r = c.post(f"{mtls_gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {env['key']}"})
    assert r.status_code == 200 and r.json()["method"] == "api_key" and r.json()["team"] == "lab"


def test_certificate_from_another_ca_fails_the_handshake(env, mtls_gateway):
    with tls_client(env["pki"], env["certs"]["foreign_lab"]) as c, pytest.raises(httpx.TransportError):
        c.post(f"{mtls_gateway.url}/v1/chat/completions")


def test_expired_certificate_fails_the_handshake(env, mtls_gateway):
    with tls_client(env["pki"], env["certs"]["expired_lab"]) as c, pytest.raises(httpx.TransportError):
        c.post(f"{mtls_gateway.url}/v1/chat/completions")


def test_no_certificate_where_one_is_required_fails_the_handshake(env, mtls_gateway):
    with tls_client(env["pki"]) as c, pytest.raises(httpx.TransportError):
        c.post(f"{mtls_gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {env['key']}"})


def test_tls_options_for_uvicorn():
    required = uvicorn_tls_options(TLSServerSettings(cert_file="s.crt", key_file="s.key", client_ca_file="ca.crt"))
    assert required["ssl_cert_reqs"] == ssl.CERT_REQUIRED and required["http"] is PeerCertH11Protocol
    optional = uvicorn_tls_options(TLSServerSettings(cert_file="s.crt", key_file="s.key", client_ca_file="ca.crt", client_cert="optional"))
    assert optional["ssl_cert_reqs"] == ssl.CERT_OPTIONAL
    assert "ssl_cert_reqs" not in uvicorn_tls_options(TLSServerSettings(cert_file="s.crt", key_file="s.key"))


# --- certificates forwarded by an ingress ----------------------------------------------------------
def forwarded_settings(env, trusted: str) -> AuthSettings:
    return AuthSettings(
        mtls=MTLSSettings(
            identities=IDENTITIES,
            forwarded_cert_header="X-Forwarded-Client-Cert",
            trusted_proxies=[ipaddress.ip_network(trusted)],
            forwarded_cert_ca_file=str(env["pki"].ca.ca_file),
        )
    )


@pytest.fixture(scope="module")
def behind_trusted_proxy(env):
    with ServedApp(env["work"], forwarded_settings(env, "127.0.0.0/8"), env["url"]) as app:
        yield app


@pytest.fixture(scope="module")
def behind_untrusted_peer(env):
    with ServedApp(env["work"], forwarded_settings(env, "10.0.0.0/8"), env["url"]) as app:
        yield app


def pem_of(files) -> str:
    return files.cert.read_text()


def der_of(files) -> bytes:
    return x509.load_pem_x509_certificate(files.cert.read_bytes()).public_bytes(Encoding.DER)


@pytest.mark.parametrize("style", ["nginx-escaped-pem", "envoy-xfcc", "base64-der"])
def test_forwarded_certificate_from_a_trusted_proxy(env, behind_trusted_proxy, style):
    import base64

    lab = env["certs"]["lab"]
    value = {
        "nginx-escaped-pem": urllib.parse.quote(pem_of(lab)),
        "envoy-xfcc": f'Hash=abc;Cert="{urllib.parse.quote(pem_of(lab))}";Subject="CN=lab-results"',
        "base64-der": base64.b64encode(der_of(lab)).decode(),
    }[style]
    r = httpx.post(f"{behind_trusted_proxy.url}/v1/chat/completions", headers={"X-Forwarded-Client-Cert": value})
    assert r.status_code == 200, r.text
    assert (r.json()["team"], r.json()["method"]) == ("lab", "mtls")


def test_forwarded_certificate_from_another_ca_is_rejected(env, behind_trusted_proxy):
    value = urllib.parse.quote(pem_of(env["certs"]["foreign_lab"]))
    r = httpx.post(f"{behind_trusted_proxy.url}/v1/chat/completions", headers={"X-Forwarded-Client-Cert": value})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_client_certificate"


@pytest.mark.parametrize("name", ["expired_lab", "future_lab"])
def test_forwarded_certificate_outside_its_validity_is_rejected(env, behind_trusted_proxy, name):
    value = urllib.parse.quote(pem_of(env["certs"][name]))
    r = httpx.post(f"{behind_trusted_proxy.url}/v1/chat/completions", headers={"X-Forwarded-Client-Cert": value})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_client_certificate"
    assert "expired or is not yet valid" in r.json()["error"]["message"]


def test_forwarded_header_from_an_untrusted_address_is_ignored(env, behind_untrusted_peer):
    value = urllib.parse.quote(pem_of(env["certs"]["lab"]))
    r = httpx.post(f"{behind_untrusted_peer.url}/v1/chat/completions", headers={"X-Forwarded-Client-Cert": value})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_credentials"


def test_rejected_key_is_not_written_to_the_server_log(env, behind_untrusted_peer):
    secret = "Q" * 43
    r = httpx.post(f"{behind_untrusted_peer.url}/v1/chat/completions", headers={"Authorization": f"Bearer ward-0123456789abcdef.{secret}"})
    assert r.status_code == 401
    assert "/v1/chat/completions" in behind_untrusted_peer.log_text()  # the access log did record the request
    assert secret not in behind_untrusted_peer.log_text()


def test_guard_strips_the_header_from_untrusted_peers_only():
    seen = []

    async def app(scope, receive, send):
        seen.append(dict(scope["headers"]))

    guard = ForwardedCertHeaderGuard(app, "X-Forwarded-Client-Cert", [ipaddress.ip_network("10.1.0.0/16")])
    headers = [(b"x-forwarded-client-cert", b"abc"), (b"accept", b"*/*")]
    import asyncio

    asyncio.run(guard({"type": "http", "client": ("192.168.1.5", 5000), "headers": headers}, None, None))
    asyncio.run(guard({"type": "http", "client": ("10.1.2.3", 5000), "headers": headers}, None, None))
    assert seen[0] == {b"accept": b"*/*"}
    assert seen[1] == {b"x-forwarded-client-cert": b"abc", b"accept": b"*/*"}


@pytest.mark.parametrize("value", ["", "not a certificate", "Cert=\"%%%\"", "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----"])
def test_unreadable_forwarded_values_parse_to_nothing_or_fail_cleanly(value):
    der = parse_forwarded_cert(value)
    if der is not None:
        with pytest.raises(ValueError):
            x509.load_der_x509_certificate(der)
