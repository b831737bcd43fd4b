"""The expiry of every certificate the gateway loaded, as a Prometheus gauge (gateway.certificate_metrics)."""
from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from auth_tls_certs import TestPKI
from gateway.auth.settings import AuthSettings
from gateway.certificate_metrics import METRIC, CertificateExpiryCollector, earliest_expiry

DAY = 86400


def expiries(auth: AuthSettings) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(CertificateExpiryCollector(auth))
    return {
        sample.labels["certificate"]: sample.value
        for family in registry.collect()
        if family.name == METRIC
        for sample in family.samples
    }


def test_every_configured_certificate_has_its_expiry(tmp_path):
    pki = TestPKI(tmp_path)  # leaves expire in a day, CAs in two
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.other_ca.files.cert_pem() + pki.server.cert_pem())  # a CA, then a leaf
    auth = AuthSettings(
        tls={"cert_file": str(pki.server.cert), "key_file": str(pki.server.key), "client_ca_file": str(bundle)},
        worker_tls={"ca_file": str(pki.ca.ca_file), "cert_file": str(pki.gateway.cert), "key_file": str(pki.gateway.key)},
    )
    found = expiries(auth)
    assert set(found) == {"server", "client_ca", "worker_ca", "worker_client"}
    now = time.time()
    for role in ("server", "worker_client"):
        assert now + 0.9 * DAY < found[role] < now + 1.1 * DAY
    assert now + 1.9 * DAY < found["worker_ca"] < now + 2.1 * DAY
    assert found["client_ca"] == pytest.approx(found["server"])  # the bundle's earliest certificate counts


def test_no_tls_configured_means_no_series():
    assert expiries(AuthSettings()) == {}


def test_a_file_without_a_certificate_is_refused(tmp_path):
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ValueError):
        earliest_expiry(empty)
