"""Identity settings: env overrides, issuer scheme rules, pinned algorithms, certificate rules, TLS flags."""
from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from gateway.auth.principal import Role, conflicting_roles, expand_roles
from gateway.auth.settings import AuthSettings, CertIdentity, OIDCSettings
from gateway.auth.tls_server import add_tls_arguments, tls_settings_from_args


def test_env_vars_fill_and_override_the_oidc_section(monkeypatch):
    monkeypatch.setenv("WARD_OIDC_ISSUER", "https://login.hospital.example/realms/ward")
    monkeypatch.setenv("WARD_OIDC_AUDIENCE", "ward-api, ward-batch")
    monkeypatch.setenv("WARD_OIDC_TEAM_CLAIM", "realm_access.groups")
    settings = AuthSettings.model_validate({"oidc": {"issuer": "https://old.example", "audience": "x", "roles_claim": "app_roles"}})
    assert settings.oidc.issuer == "https://login.hospital.example/realms/ward"
    assert settings.oidc.audience == ["ward-api", "ward-batch"]
    assert settings.oidc.team_claim == "realm_access.groups"
    assert settings.oidc.roles_claim == "app_roles"  # not in the environment: the file's value stays


def test_without_env_or_config_oidc_is_off(monkeypatch):
    for var in ("WARD_OIDC_ISSUER", "WARD_OIDC_AUDIENCE", "WARD_OIDC_TEAM_CLAIM", "WARD_OIDC_ROLES_CLAIM"):
        monkeypatch.delenv(var, raising=False)
    assert AuthSettings().oidc is None


@pytest.mark.parametrize("issuer,ok", [
    ("https://idp.hospital.example", True),
    ("http://127.0.0.1:8080", True),
    ("http://localhost:8080/realms/x", True),
    ("http://[::1]:9000", True),
    ("http://idp.hospital.example", False),
    ("http://10.0.0.5:8080", False),
    ("ftp://idp.hospital.example", False),
    ("idp.hospital.example", False),
])
def test_http_issuer_only_on_loopback(issuer, ok):
    if ok:
        assert OIDCSettings(issuer=issuer, audience="a").issuer == issuer
    else:
        with pytest.raises(ValidationError):
            OIDCSettings(issuer=issuer, audience="a")


@pytest.mark.parametrize("algs", [["HS256"], ["none"], ["RS256", "HS512"], []])
def test_only_asymmetric_algorithms_can_be_pinned(algs):
    with pytest.raises(ValidationError):
        OIDCSettings(issuer="https://idp.example", audience="a", algorithms=algs)


def test_unknown_setting_is_an_error():
    with pytest.raises(ValidationError):
        AuthSettings.model_validate({"oidc": {"issuer": "https://idp.example", "audience": "a", "team_claims": "groups"}})


def test_certificate_rule_needs_exactly_one_match_and_a_valid_subject():
    with pytest.raises(ValidationError):
        CertIdentity(team="lab")
    with pytest.raises(ValidationError):
        CertIdentity(team="lab", san_dns="a.example", san_uri="spiffe://x/y")
    with pytest.raises(ValidationError):
        CertIdentity(team="lab", subject="this is not a name")
    assert CertIdentity(team="lab", subject="CN=lab,  O=Hospital").subject == "CN=lab,O=Hospital"


def test_role_implications():
    assert expand_roles([Role.PLATFORM_ADMIN]) == {Role.PLATFORM_ADMIN, Role.TEAM_ADMIN, Role.USER}
    assert expand_roles([Role.TEAM_ADMIN]) == {Role.TEAM_ADMIN, Role.USER}
    assert expand_roles([Role.AUDITOR]) == {Role.AUDITOR}  # separation of duties: no inference
    with pytest.raises(ValueError):
        expand_roles(["superuser"])


@pytest.mark.parametrize("roles,conflict", [
    ([Role.AUDITOR, Role.PLATFORM_ADMIN], (Role.AUDITOR, Role.PLATFORM_ADMIN)),
    ([Role.AUDITOR, Role.TEAM_ADMIN], (Role.AUDITOR, Role.TEAM_ADMIN)),
    ([Role.SECURITY_OFFICER, Role.PLATFORM_ADMIN], (Role.SECURITY_OFFICER, Role.PLATFORM_ADMIN)),
    ([Role.SECURITY_OFFICER, Role.TEAM_ADMIN], (Role.SECURITY_OFFICER, Role.TEAM_ADMIN)),
    ([Role.AUDITOR, Role.USER], None),
    ([Role.AUDITOR, Role.SECURITY_OFFICER], None),
    ([Role.PLATFORM_ADMIN, Role.TEAM_ADMIN, Role.USER], None),
])
def test_separation_of_duties_forbids_oversight_beside_administration(roles, conflict):
    assert conflicting_roles(roles) == conflict
    assert expand_roles([Role.SECURITY_OFFICER]) == {Role.SECURITY_OFFICER}  # grants auditors, nothing else


@pytest.mark.parametrize("roles", [["auditor", "platform_admin"], ["security_officer", "team_admin"]])
def test_a_certificate_rule_cannot_join_oversight_and_administration(roles):
    with pytest.raises(ValidationError, match="separation of duties"):
        CertIdentity(team="lab", san_dns="siem.example", roles=roles)
    assert CertIdentity(team="lab", san_dns="siem.example", roles=["auditor"]).roles == [Role.AUDITOR]


@pytest.mark.parametrize("roles", [["auditor"], ["user", "security_officer"], ["auditor", "team_admin"]])
def test_oidc_default_roles_never_grant_oversight(roles):
    # every token without a role the mapping knows would get them
    with pytest.raises(ValidationError):
        OIDCSettings(issuer="https://idp.example", audience="a", default_roles=roles)


def _tls_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tls_arguments(parser)
    return parser.parse_args(list(argv))


def test_tls_flags():
    assert tls_settings_from_args(_tls_args()) is None
    tls = tls_settings_from_args(_tls_args("--tls-cert", "s.crt", "--tls-key", "s.key", "--client-ca", "ca.crt"))
    assert (tls.cert_file, tls.key_file, tls.client_ca_file, tls.client_cert) == ("s.crt", "s.key", "ca.crt", "required")
    with pytest.raises(ValueError):
        tls_settings_from_args(_tls_args("--client-ca", "ca.crt"))
