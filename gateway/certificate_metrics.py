"""When the certificates the gateway loaded expire: ``ward_tls_certificate_expiry_timestamp_seconds``.

One series per configured PEM file, labelled by what it is for:

| certificate            | setting                              |
| ---------------------- | ------------------------------------ |
| ``server``             | ``auth.tls.cert_file`` (HTTPS)       |
| ``client_ca``          | ``auth.tls.client_ca_file`` (mTLS)   |
| ``forwarded_client_ca``| ``auth.mtls.forwarded_cert_ca_file`` |
| ``worker_ca``          | ``auth.worker_tls.ca_file``          |
| ``worker_client``      | ``auth.worker_tls.cert_file``        |

The value is the earliest ``notAfter`` in the file (a chain or a CA bundle is as good as its first
certificate to expire), in Unix seconds, read once when the gateway starts: the gateway serves the
files it loaded then, so after a rotation the figure moves only once the gateway restarts. An alert
on ``... - time() < 14 days`` therefore fires both for a certificate nobody renewed and for a renewed
one that no gateway picked up yet.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterable

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gateway.auth.settings import AuthSettings

log = logging.getLogger("ward.gateway.certificates")

METRIC = "ward_tls_certificate_expiry_timestamp_seconds"


def earliest_expiry(path: str | pathlib.Path) -> float:
    """The earliest ``notAfter`` (Unix seconds) among the PEM certificates in ``path``.

    Raises OSError when the file cannot be read and ValueError when it holds no certificate.
    """
    certificates = x509.load_pem_x509_certificates(pathlib.Path(path).read_bytes())
    return min(c.not_valid_after_utc.timestamp() for c in certificates)


def configured_certificates(auth: AuthSettings) -> dict[str, str]:
    """The certificate files ``auth`` names, by role."""
    files = {}
    if auth.tls is not None:
        files["server"] = auth.tls.cert_file
        if auth.tls.client_ca_file:
            files["client_ca"] = auth.tls.client_ca_file
    if auth.mtls.forwarded_cert_ca_file:
        files["forwarded_client_ca"] = auth.mtls.forwarded_cert_ca_file
    if auth.worker_tls is not None:
        files["worker_ca"] = auth.worker_tls.ca_file
        files["worker_client"] = auth.worker_tls.cert_file
    return files


class CertificateExpiryCollector(Collector):
    """Serves the expiry of every configured certificate, as read at start."""

    def __init__(self, auth: AuthSettings) -> None:
        self._expiry: dict[str, float] = {}
        for role, path in configured_certificates(auth).items():
            try:
                self._expiry[role] = earliest_expiry(path)
            except (OSError, ValueError) as err:  # the TLS layer reports the file itself
                log.warning("cannot read the %s certificate's expiry: %s", role, err)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            METRIC, "When a certificate the gateway loaded expires (Unix seconds).", labels=["certificate"]
        )
        for role, expiry in sorted(self._expiry.items()):
            family.add_metric([role], expiry)
        yield family
