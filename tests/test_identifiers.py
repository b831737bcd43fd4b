"""One definition of each identifier's limits: the migrated database, the audit log, the quota layer
and the routes' types all agree with gateway.identifiers, so what one accepts another can store."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from pydantic import TypeAdapter, ValidationError

from gateway.audit.entries import EntryDraft, EntryKind
from gateway.audit.errors import AuditInputError
from gateway.auth.records import InvalidIdentityInput, check_team_name
from gateway.db import create_db_engine, upgrade_to_head
from gateway.identifiers import (
    KEY_ID_MAX,
    MODEL_NAME_MAX,
    PRINTABLE_PATTERN,
    REQUEST_ID_MAX,
    SUBJECT_MAX,
    TEAM_NAME_MAX,
    TEAM_NAME_PATTERN,
    KeyId,
    ModelName,
    TeamName,
)
from gateway.policy.store import InvalidPolicyInput, check_model_name
from gateway.quota.errors import InvalidQuotaRequest
from gateway.quota.validation import check_name


def column_lengths(url: str) -> dict[tuple[str, str], int]:
    upgrade_to_head(url)
    engine = create_db_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {
            (table, column["name"]): column["type"].length
            for table in ("teams", "api_keys", "audit_entries", "team_scheduling", "team_model_access",
                          "model_approvals")
            for column in inspector.get_columns(table)
            if getattr(column["type"], "length", None)
        }
    finally:
        engine.dispose()


def test_the_migrated_columns_have_the_identifiers_lengths(tmp_path):
    lengths = column_lengths(f"sqlite:///{tmp_path / 'ward.db'}")
    assert lengths[("teams", "name")] == TEAM_NAME_MAX
    assert lengths[("api_keys", "id")] == KEY_ID_MAX
    assert lengths[("audit_entries", "team")] == TEAM_NAME_MAX
    assert lengths[("audit_entries", "model")] == MODEL_NAME_MAX
    assert lengths[("audit_entries", "subject")] == SUBJECT_MAX
    assert lengths[("audit_entries", "request_id")] == REQUEST_ID_MAX
    for table in ("api_keys", "team_scheduling", "team_model_access"):
        assert lengths[(table, "team")] == TEAM_NAME_MAX, table
    assert lengths[("model_approvals", "model")] == MODEL_NAME_MAX


@pytest.mark.parametrize("name,valid", [
    ("a", True), ("radiology", True), ("icu-2_north", True), ("a" * TEAM_NAME_MAX, True),
    ("a" * (TEAM_NAME_MAX + 1), False), ("", False), ("Radiology", False), ("-ed", False), ("ed ward", False),
])
def test_every_layer_takes_the_same_team_names(name, valid):
    def accepted(check) -> bool:
        try:
            check()
            return True
        except (ValidationError, InvalidIdentityInput, InvalidQuotaRequest, AuditInputError):
            return False

    now = datetime.now(timezone.utc)
    assert accepted(lambda: TypeAdapter(TeamName).validate_python(name)) is valid  # the routes
    assert accepted(lambda: check_team_name(name)) is valid  # the team store
    assert accepted(lambda: check_name(name, "team")) is valid  # the quota layer
    if valid:  # the audit log holds every name the others accept
        assert accepted(lambda: EntryDraft.build(EntryKind.ADMIN, now, {}, team=name))


@pytest.mark.parametrize("adapter,limit,param", [(KeyId, KEY_ID_MAX, "key_id"), (ModelName, MODEL_NAME_MAX, "model")])
def test_key_ids_and_model_names_have_one_limit(adapter, limit, param):
    TypeAdapter(adapter).validate_python("k" * limit)
    check_name("k" * limit, param)
    with pytest.raises(ValidationError):
        TypeAdapter(adapter).validate_python("k" * (limit + 1))
    with pytest.raises(InvalidQuotaRequest):
        check_name("k" * (limit + 1), param)
    with pytest.raises(ValidationError):
        TypeAdapter(adapter).validate_python("bad\x00name")


def test_the_model_policy_takes_the_same_model_names():
    assert check_model_name("m" * MODEL_NAME_MAX) == "m" * MODEL_NAME_MAX
    for name in ("m" * (MODEL_NAME_MAX + 1), "", "bad\x00name"):
        with pytest.raises(InvalidPolicyInput):
            check_model_name(name)


def test_every_admin_route_takes_team_key_and_model_parameters_with_the_shared_limits(tmp_path):
    from gateway.cli import build_app
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(database_url=f"sqlite:///{tmp_path / 'ward.db'}", data_dir=tmp_path,
                               models={"m": {"workers": ["127.0.0.1:1"]}})
    expected = {"team": (TEAM_NAME_MAX, TEAM_NAME_PATTERN), "key_id": (KEY_ID_MAX, PRINTABLE_PATTERN),
                "model": (MODEL_NAME_MAX, PRINTABLE_PATTERN)}
    checked = []
    for path, operations in build_app(settings).openapi()["paths"].items():
        if not path.startswith("/admin/") or path.startswith("/admin/usage"):  # usage filters: any text matches or not
            continue
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["name"] not in expected or parameter["in"] not in ("path", "query"):
                    continue
                schema = parameter["schema"]
                schema = next((s for s in schema.get("anyOf", []) if s.get("type") == "string"), schema)
                where = (method, path, parameter["name"])
                assert (schema.get("maxLength"), schema.get("pattern")) == expected[parameter["name"]], where
                checked.append(where)
    assert ("put", "/admin/teams/{team}/models", "team") in checked
    assert ("put", "/admin/models/{model}", "model") in checked
    assert ("put", "/admin/teams/{team}/quotas", "key_id") in checked


def test_the_audit_log_refuses_what_its_columns_cannot_hold():
    now = datetime.now(timezone.utc)
    EntryDraft.build(EntryKind.ADMIN, now, {}, model="m" * MODEL_NAME_MAX, subject="s" * SUBJECT_MAX)
    for field, value in (("model", "m" * (MODEL_NAME_MAX + 1)), ("subject", "s" * (SUBJECT_MAX + 1)),
                         ("team", "t" * (TEAM_NAME_MAX + 1))):
        with pytest.raises(AuditInputError):
            EntryDraft.build(EntryKind.ADMIN, now, {}, **{field: value})


def test_an_oidc_subject_longer_than_the_audit_log_holds_is_a_401_not_a_500():
    from gateway.auth.errors import AuthenticationError
    from gateway.auth.oidc import ClaimMapper
    from gateway.auth.settings import OIDCSettings

    mapper = ClaimMapper(OIDCSettings(issuer="https://idp.test", audience=["ward"]))
    assert mapper.subject({"sub": "s" * SUBJECT_MAX}) == "s" * SUBJECT_MAX
    with pytest.raises(AuthenticationError) as refused:
        mapper.subject({"sub": "s" * (SUBJECT_MAX + 1)})
    assert refused.value.code == "invalid_token"
