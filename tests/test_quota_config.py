"""The quota file: schema, how limits resolve per scope, reload on change, bad files refused."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.quota.config import diff_configs
from gateway.quota.config_file import QuotaConfigError, QuotaConfigFile, load_quota_config, parse_quota_config
from gateway.quota.limits import TEAM_SCOPE, QuotaLimits, Scope, ScopeKind
from gateway.quota.settings import OutagePolicies, QuotaSettings
from quota_support import FakeClock

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "quotas.yaml"

GOOD = """
defaults:
  requests_per_minute: 60
  tokens_per_minute: 100000
teams:
  emergency:
    limits:
      requests_per_minute: 600
      tokens_per_day: null
      max_concurrent: 16
    keys:
      batch-key:
        requests_per_minute: 10
    models:
      llama-3.1-70b:
        tokens_per_minute: 50000
  research: {}
"""


def test_team_limits_inherit_defaults_field_by_field_and_null_means_unlimited():
    config = parse_quota_config(GOOD)
    limits, source = config.limits_for("emergency", TEAM_SCOPE)
    assert source == "file"
    assert limits == QuotaLimits(requests_per_minute=600, tokens_per_minute=100000, max_concurrent=16)
    assert config.limits_for("research", TEAM_SCOPE) == (QuotaLimits(requests_per_minute=60, tokens_per_minute=100000), "default")
    assert config.limits_for("unlisted", TEAM_SCOPE)[1] == "default"
    assert config.limits_for("emergency", Scope(ScopeKind.KEY, "batch-key")) == (QuotaLimits(requests_per_minute=10), "file")
    assert config.limits_for("emergency", Scope(ScopeKind.MODEL, "llama-3.1-70b"))[0].tokens_per_minute == 50000
    assert config.limits_for("emergency", Scope(ScopeKind.MODEL, "other")) == (QuotaLimits(), "none")


def test_an_empty_file_means_no_limits():
    config = parse_quota_config("")
    assert config.limits_for("anyone", TEAM_SCOPE) == (QuotaLimits(), "none")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("teams:\n  ed:\n    limits:\n      requests_per_minut: 5\n", "teams.ed.limits.requests_per_minut: Extra inputs are not permitted"),
        ("defaults:\n  tokens_per_day: -1\n", "defaults.tokens_per_day: Input should be greater than or equal to 0"),
        ("defaults:\n  max_concurrent: '10'\n", "defaults.max_concurrent: Input should be a valid integer"),
        ("defaults:\n  max_concurrent: true\n", "defaults.max_concurrent: Input should be a valid integer"),
        ("defaults:\n  max_concurrent: 1.5\n", "defaults.max_concurrent: Input should be a valid integer"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("teams: [\n", "not valid YAML"),
        ("limits: {}\n", "limits: Extra inputs are not permitted"),
        # names no team, key or model can have would never match: refused, not silently unused
        ("teams:\n  Radiology: {}\n", "teams.Radiology.[key]: String should match pattern"),
        (f"teams:\n  {'a' * 65}: {{}}\n", "String should have at most 64 characters"),
        (f"teams:\n  ed:\n    keys:\n      {'k' * 33}: {{}}\n", "String should have at most 32 characters"),
    ],
)
def test_bad_files_are_refused_with_a_message_that_says_where(text, fragment):
    with pytest.raises(QuotaConfigError) as info:
        parse_quota_config(text, source="quotas.yaml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("quotas.yaml:")


def test_the_file_is_reloaded_on_change_and_a_bad_version_keeps_the_old_config(tmp_path, caplog):
    path = tmp_path / "quotas.yaml"
    path.write_text("defaults:\n  requests_per_minute: 10\n")
    clock = FakeClock(0)
    changes = []
    source = QuotaConfigFile(path, check_interval_s=1.0, clock=clock, on_change=lambda old, new: changes.append((old, new)))
    assert source.current().defaults.requests_per_minute == 10

    path.write_text("defaults:\n  requests_per_minute: 20\n")
    assert source.current().defaults.requests_per_minute == 10  # not looked at again before the interval
    clock.advance(1.0)
    assert source.current().defaults.requests_per_minute == 20
    assert len(changes) == 1

    path.write_text("defaults:\n  requests_per_minute: lots\n")
    clock.advance(1.0)
    assert source.current().defaults.requests_per_minute == 20
    assert "requests_per_minute" in source.last_error
    assert any("quota file rejected" in r.message for r in caplog.records)

    path.unlink()  # a missing file is a bad version too
    clock.advance(1.0)
    assert source.current().defaults.requests_per_minute == 20

    path.write_text("defaults:\n  requests_per_minute: 30\n")
    os.utime(path, ns=(1, 1))  # even an older mtime counts as a change
    clock.advance(1.0)
    assert source.current().defaults.requests_per_minute == 30
    assert source.last_error is None and len(changes) == 2


def test_a_missing_or_bad_file_at_start_up_is_an_error(tmp_path):
    with pytest.raises(QuotaConfigError, match="cannot read"):
        QuotaConfigFile(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("defaults: {max_concurrent: -3}\n")
    with pytest.raises(QuotaConfigError, match="max_concurrent"):
        QuotaConfigFile(tmp_path / "bad.yaml")


def test_diff_names_every_scope_whose_limits_changed():
    old = parse_quota_config(GOOD)
    new = parse_quota_config(GOOD.replace("requests_per_minute: 10\n", "requests_per_minute: 5\n").replace("  research: {}\n", ""))
    assert diff_configs(old, new) == [
        ("emergency", Scope(ScopeKind.KEY, "batch-key"), QuotaLimits(requests_per_minute=10), QuotaLimits(requests_per_minute=5)),
    ]  # research goes from listed-without-limits to unlisted: the defaults, unchanged
    changed_defaults = parse_quota_config(GOOD.replace("  requests_per_minute: 60\n", "  requests_per_minute: 61\n"))
    teams = [team for team, *_ in diff_configs(old, changed_defaults)]
    assert teams == ["*", "research"]  # emergency sets its own requests_per_minute


def test_the_example_file_in_config_is_valid():
    config = load_quota_config(EXAMPLE)
    assert config.teams, "the example should show at least one team"


def test_budgets_cannot_have_a_local_outage_policy():
    with pytest.raises(ValueError, match="budget cannot be kept locally"):
        OutagePolicies(tokens_per_day="local")
    assert QuotaSettings(redis_url=None).outage_policy.tokens_per_month.value == "fail_closed"


def test_redis_url_comes_from_the_environment_when_not_given(monkeypatch):
    monkeypatch.setenv("WARD_REDIS_URL", "redis://example:6379/0")
    assert QuotaSettings().redis_url == "redis://example:6379/0"
    monkeypatch.delenv("WARD_REDIS_URL")
    assert QuotaSettings().redis_url is None


class _SwitchableConfig:
    def __init__(self, config) -> None:
        self.config = config

    def current(self):
        return self.config


def test_limits_in_force_follow_file_reloads_and_admin_changes_at_once() -> None:
    """Resolved limits are kept per (team, key, model) for speed; a new file, an admin-set limit and
    a refreshed set of overrides must each show in the very next lookup."""
    from gateway.quota.limits_in_force import LimitsInForce

    source = _SwitchableConfig(parse_quota_config("defaults: {requests_per_minute: 10}"))
    limits = LimitsInForce(source)

    def team_rpm() -> int | None:
        return limits.for_request("cardiology", "key-1", "m")[0].limits.requests_per_minute

    assert team_rpm() == 10
    assert limits.for_request("cardiology", "key-1", "m") is limits.for_request("cardiology", "key-1", "m")
    source.config = parse_quota_config("defaults: {requests_per_minute: 20}")
    assert team_rpm() == 20
    limits.set_override("cardiology", TEAM_SCOPE, QuotaLimits(requests_per_minute=5))
    assert team_rpm() == 5
    limits.replace_overrides({("cardiology", TEAM_SCOPE): QuotaLimits(requests_per_minute=7)})
    assert team_rpm() == 7
    limits.set_override("cardiology", TEAM_SCOPE, None)
    assert team_rpm() == 20
    key_scope = limits.for_request("cardiology", "key-2", None)
    assert [item.scope for item in key_scope] == [TEAM_SCOPE, Scope(ScopeKind.KEY, "key-2")]


def test_request_flags_follow_file_reloads_and_admin_changes_at_once() -> None:
    """The flags kept beside the resolved limits (whether a token or a concurrency limit applies)
    change with them: a new file and an admin-set limit show in the very next lookup."""
    from gateway.quota.limits_in_force import LimitsInForce

    source = _SwitchableConfig(parse_quota_config("defaults: {requests_per_minute: 10}"))
    limits = LimitsInForce(source)

    def flags() -> tuple[bool, bool]:
        resolved = limits.resolve("cardiology", "key-1", "m")
        assert resolved.scopes == limits.for_request("cardiology", "key-1", "m")
        assert resolved.names == (TEAM_SCOPE, Scope(ScopeKind.KEY, "key-1"), Scope(ScopeKind.MODEL, "m"))
        return resolved.counts_tokens, resolved.limits_concurrency

    assert flags() == (False, False)
    source.config = parse_quota_config("defaults: {tokens_per_minute: 100}")
    assert flags() == (True, False)
    limits.set_override("cardiology", Scope(ScopeKind.MODEL, "m"), QuotaLimits(max_concurrent=2))
    assert flags() == (True, True)
    limits.replace_overrides({})
    assert flags() == (True, False)
    source.config = parse_quota_config("defaults: {tokens_per_day: 1000}")
    assert flags() == (True, False)
    source.config = parse_quota_config("defaults: {requests_per_minute: 10}")
    assert flags() == (False, False)
