"""Test certificates made at test time with `cryptography`: a CA, a gateway client certificate, a server
certificate for 127.0.0.1/localhost, service client certificates, and a second unrelated "other" CA.

Usage: `pki = TestPKI(tmp_path)`; every certificate is written as PEM files and exposed as `CertFiles`.
"""
from __future__ import annotations

import datetime
import ipaddress
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertFiles:
    cert: pathlib.Path  # PEM certificate
    key: pathlib.Path  # PEM private key (unencrypted)

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def _name(cn: str, org: str = "Ward Test Hospital") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    """A self-signed CA that issues leaf certificates into a directory."""

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, directory: pathlib.Path, name: str):
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{name} CA"))
            .issuer_name(_name(f"{name} CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.files = self._write(f"{name}-ca", self.cert, self.key)

    @property
    def ca_file(self) -> pathlib.Path:
        return self.files.cert

    def _write(self, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertFiles:
        self.directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return CertFiles(cert_path, key_path)

    def issue(
        self,
        common_name: str,
        *,
        server: bool = False,
        client: bool = False,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        org: str = "Ward Test Hospital",
        days_from_now: int = 0,  # shifts the validity window: -2 gives an expired certificate, 2 a future one
    ) -> CertFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days_from_now)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, org))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return self._write(f"{self.name}-{common_name}", cert, key)


class TestPKI:
    """The usual set: `ca` (trusted), `server` (127.0.0.1, localhost), `gateway` (client), and `other_ca`."""

    __test__ = False

    def __init__(self, directory: pathlib.Path):
        self.ca = TestCA(directory, "ward")
        self.other_ca = TestCA(directory, "other")
        self.server = self.ca.issue("ward-server", server=True, dns=("localhost",), ips=("127.0.0.1",))
        self.gateway = self.ca.issue("ward-gateway", client=True, dns=("gateway.ward.test",))
        self.other_gateway = self.other_ca.issue("ward-gateway", client=True, dns=("gateway.ward.test",))
