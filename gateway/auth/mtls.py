"""Client certificates as credentials.

A certificate reaches the gateway in one of two ways:
- the gateway terminates TLS itself: gateway.auth.tls_server puts the verified peer certificate into
  the ASGI scope (`scope["extensions"]["tls"]["client_cert_chain"]`, the ASGI TLS extension);
- an ingress terminates mTLS and forwards the certificate in a header: read only when the immediate
  peer is a configured trusted proxy, and stripped from every other request (ForwardedCertHeaderGuard).
Configured CertIdentity rules then map the certificate's subject or a SAN to a service Principal.
"""
from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.errors import AuthenticationError, PermissionDenied
from gateway.auth.principal import AuthMethod, Principal, expand_roles
from gateway.auth.settings import CertIdentity, MTLSSettings

log = logging.getLogger("ward.auth.mtls")

_XFCC_CERT_RE = re.compile(r'(?:^|;)\s*Cert="?([^";,]+)"?', re.IGNORECASE)


@dataclass(frozen=True)
class CertInfo:
    subject: str  # RFC 4514
    dns: tuple[str, ...]
    uris: tuple[str, ...]
    emails: tuple[str, ...]
    cert: x509.Certificate


def normalize_subject(subject: str) -> str:
    """Canonical RFC 4514 form of a configured subject, so spaces after commas and escaping do not matter.

    Raises ValueError for text that is not an RFC 4514 name.
    """
    parts = [part.strip() for part in re.split(r"(?<!\\),", subject)]
    return x509.Name.from_rfc4514_string(",".join(parts)).rfc4514_string()


@lru_cache(maxsize=4096)
def cert_info_from_der(der: bytes) -> CertInfo:
    """Subject and SANs of a DER certificate (cached: the same few services call again and again)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        emails = tuple(san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        dns = uris = emails = ()
    return CertInfo(cert.subject.rfc4514_string(), dns, uris, emails, cert)


@lru_cache(maxsize=4096)
def der_from_pem(pem: str) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)


def parse_forwarded_cert(value: str) -> bytes | None:
    """DER bytes of a forwarded certificate: Envoy XFCC (`Cert="<url-encoded PEM>"`), URL-encoded or
    plain PEM (nginx `$ssl_client_escaped_cert`), or base64 DER (Traefik). None if unreadable."""
    try:
        m = _XFCC_CERT_RE.search(value)
        text = unquote(m.group(1) if m else value).strip()
        if text.startswith("-----BEGIN"):
            # some proxies fold the PEM onto one line with spaces instead of newlines
            body = re.sub(r"-----[A-Z ]+-----", "", text)
            return base64.b64decode("".join(body.split()), validate=True)
        return base64.b64decode("".join(text.split()), validate=True)
    except (ValueError, TypeError):
        return None


def tls_peer_cert_der(scope: Scope) -> bytes | None:
    """The verified client certificate the gateway's own TLS put into the scope, if any."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return der_from_pem(chain[0])
    except ValueError:
        return None


def is_trusted_proxy(scope: Scope, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    client = scope.get("client")
    if not client or not networks:
        return False
    try:
        addr = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(addr in net for net in networks)


def _within_validity(cert: x509.Certificate) -> bool:
    now = datetime.datetime.now(datetime.timezone.utc)
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


class CertificateMapper:
    """CertIdentity rules, indexed by what they match."""

    def __init__(self, identities: list[CertIdentity]):
        self._by_subject = {normalize_subject(i.subject): i for i in identities if i.subject}
        self._by_dns = {i.san_dns.lower(): i for i in identities if i.san_dns}
        self._by_uri = {i.san_uri: i for i in identities if i.san_uri}
        self._by_email = {i.san_email.lower(): i for i in identities if i.san_email}

    def match(self, info: CertInfo) -> tuple[CertIdentity, str] | None:
        """The first rule that fits, tried as: subject, URI SAN, DNS SAN, email SAN; with the matched value."""
        if info.subject in self._by_subject:
            return self._by_subject[info.subject], info.subject
        for uri in info.uris:
            if uri in self._by_uri:
                return self._by_uri[uri], uri
        for name in info.dns:
            if name.lower() in self._by_dns:
                return self._by_dns[name.lower()], name
        for email in info.emails:
            if email.lower() in self._by_email:
                return self._by_email[email.lower()], email
        return None


class MTLSAuthenticator:
    def __init__(self, settings: MTLSSettings):
        self.settings = settings
        self.mapper = CertificateMapper(settings.identities)
        self._forward_ca: x509.Certificate | None = None
        if settings.forwarded_cert_ca_file:
            with open(settings.forwarded_cert_ca_file, "rb") as f:
                self._forward_ca = x509.load_pem_x509_certificate(f.read())

    def presented_cert(self, request: Request) -> bytes | None:
        """DER of the caller's certificate: from our own TLS, else from a trusted proxy's header.

        Raises AuthenticationError for an unreadable or foreign forwarded certificate.
        """
        der = tls_peer_cert_der(request.scope)
        if der is not None:
            return der
        header = self.settings.forwarded_cert_header
        if not header:
            return None
        value = request.headers.get(header)
        if value is None or not is_trusted_proxy(request.scope, self.settings.trusted_proxies):
            return None  # from an untrusted peer the header is ignored (and stripped by the guard)
        der = parse_forwarded_cert(value)
        if der is None:
            raise AuthenticationError("The forwarded client certificate could not be read.", code="invalid_client_certificate")
        if self._forward_ca is not None:
            if not self._issued_by_forward_ca(der):
                raise AuthenticationError("The forwarded client certificate is not from the configured CA.", code="invalid_client_certificate")
            # the check our own TLS handshake makes too: a proxy that does not verify must not revive an expired certificate
            if not _within_validity(cert_info_from_der(der).cert):
                raise AuthenticationError("The forwarded client certificate has expired or is not yet valid.",
                                          code="invalid_client_certificate")
        return der

    def _issued_by_forward_ca(self, der: bytes) -> bool:
        try:
            cert_info_from_der(der).cert.verify_directly_issued_by(self._forward_ca)  # type: ignore[arg-type]
            return True
        except (InvalidSignature, ValueError, TypeError):
            return False

    async def authenticate(self, request: Request) -> Principal | None:
        """The certificate's Principal; None without a certificate; PermissionDenied for an unmapped one."""
        der = self.presented_cert(request)
        if der is None:
            return None
        try:
            info = cert_info_from_der(der)
        except ValueError:
            raise AuthenticationError("The client certificate could not be read.", code="invalid_client_certificate") from None
        found = self.mapper.match(info)
        if found is None:
            raise PermissionDenied("This client certificate is not mapped to a Ward identity.", code="certificate_not_mapped")
        rule, matched = found
        return Principal(
            subject=rule.name or matched,
            team=rule.team,
            roles=expand_roles(rule.roles),
            auth_method=AuthMethod.MTLS,
            cert_subject=info.subject,
        )


class ForwardedCertHeaderGuard:
    """ASGI middleware: removes the forwarded-certificate header from requests of untrusted peers,
    so nothing downstream (handlers, logs, audit) can mistake a forged header for a real certificate."""

    def __init__(self, app: ASGIApp, header: str, trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        self.app = app
        self.header = header.lower().encode("latin-1")
        self.trusted = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not is_trusted_proxy(scope, self.trusted):
            headers = scope.get("headers") or []
            if any(name == self.header for name, _ in headers):
                log.warning("dropped a forwarded client certificate header from an untrusted peer")
                scope = dict(scope)
                scope["headers"] = [(n, v) for n, v in headers if n != self.header]
        await self.app(scope, receive, send)
