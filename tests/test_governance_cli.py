"""``ward teams`` and ``ward keys`` write their changes into the audit log (DirectAdminRecorder): one
``admin`` entry per change, committed before the command returns, in a chain ``ward audit verify``
accepts; a host without the log's signing key changes nothing."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from e2e_support import ROOT, clean_env


def ward(data_dir, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ward", *args], capture_output=True, text=True,
                          env=clean_env(WARD_DATA_DIR=str(data_dir)), cwd=ROOT, timeout=60)


def admin_entries(data_dir) -> list[dict]:
    from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(f"sqlite:///{data_dir / 'ward.db'}")
    try:
        scope = ReadScope(teams=None, content=True, kinds=None)
        return list(AuditReader(engine).iter_records(RecordFilter(kind="admin"), scope, through_seq=10**12))
    finally:
        engine.dispose()


def test_team_and_key_changes_are_admin_entries_of_a_chain_that_verifies(tmp_path):
    assert ward(tmp_path, "teams", "create", "pathology").returncode == 0
    made = json.loads(ward(tmp_path, "keys", "create", "--team", "pathology", "--json").stdout)
    assert ward(tmp_path, "keys", "revoke", made["id"]).returncode == 0
    assert ward(tmp_path, "teams", "disable", "pathology").returncode == 0
    entries = admin_entries(tmp_path)
    assert [(e["data"]["action"], e["data"]["target"]) for e in entries] == [
        ("team.create", "team:pathology"), ("key.create", f"key:{made['id']}"),
        ("key.revoke", f"key:{made['id']}"), ("team.disable", "team:pathology")]
    assert all(e["subject"].startswith("cli:") and e["data"]["actor"]["auth_method"] == "local" for e in entries)
    assert made["key"] not in json.dumps(entries)  # ids, never secrets
    verify = ward(tmp_path, "audit", "verify", "--data-dir", str(tmp_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_without_the_logs_signing_key_nothing_changes_but_listing_still_works(tmp_path):
    assert ward(tmp_path, "teams", "create", "lab").returncode == 0
    (tmp_path / "audit" / "checkpoint-key.pem").unlink()
    refused = ward(tmp_path, "keys", "create", "--team", "lab")
    assert refused.returncode == 2 and "audit log" in refused.stderr and not refused.stdout
    listed = ward(tmp_path, "keys", "list", "--team", "lab", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []  # no key was made
    assert ward(tmp_path, "teams", "list").returncode == 0


# ---- `ward quotas` and `ward approvals` --------------------------------------------------------------
# Run in this process (`ward.cli.main`: the same parsing and code path, without a new interpreter's
# start-up for each of the many commands); test_what_the_cli_sets_... runs them as real processes.

@pytest.fixture
def here(tmp_path, monkeypatch, capsys):
    """``here(*args)``: `ward ...` on the data directory tmp_path, in this process."""
    from governance_support import ward_here

    monkeypatch.setenv("WARD_DATA_DIR", str(tmp_path))
    for name in ("WARD_DATABASE_URL", "WARD_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return lambda *args: ward_here(capsys, *args)


def as_json(done):
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_ward_quotas_sets_only_what_it_is_given_and_each_change_is_an_admin_entry(tmp_path, here):
    (tmp_path / "quotas.yaml").write_text("defaults: {priority: 2, tokens_per_minute: 5000}\nteams: {icu: {weight: 3}}\n")
    assert here("teams", "create", "icu").returncode == 0
    shown = as_json(here("quotas", "show", "icu", "--json"))
    assert shown["scheduling"] == {"priority": 2, "weight": 3.0, "source": {"priority": "default", "weight": "file"}}
    changed = as_json(here("quotas", "set", "icu", "--priority", "-6", "--requests-per-minute", "40", "--json"))
    assert changed["scheduling"] == {"priority": -6, "weight": 3.0, "source": {"priority": "admin", "weight": "file"}}
    assert changed["quotas"]["limits"]["requests_per_minute"] == 40
    assert changed["quotas"]["limits"]["tokens_per_minute"] == 5000  # kept: only the given limit changed
    weighted = as_json(here("quotas", "set", "icu", "--weight", "0.5", "--json"))
    assert weighted["scheduling"]["priority"] == -6  # the admin-set class stays
    model = as_json(here("quotas", "set", "icu", "--model", "llama", "--max-concurrent", "2", "--json"))
    assert model["quotas"]["models"]["llama"]["limits"]["max_concurrent"] == 2
    cleared = as_json(here("quotas", "clear", "icu", "--json"))
    assert cleared["scheduling"]["source"] == {"priority": "default", "weight": "file"}
    assert cleared["quotas"]["source"] == "default"
    actions = [(e["data"]["action"], e["data"]["after"].get("source")) for e in admin_entries(tmp_path)[1:]]
    assert actions == [("quota.set", "cli"), ("scheduling.set", "cli"), ("scheduling.set", "cli"), ("quota.set", "cli"),
                       ("quota.clear", "cli"), ("scheduling.clear", "cli")]
    assert all(e["subject"].startswith("cli:") for e in admin_entries(tmp_path))
    verify = here("audit", "verify", "--data-dir", str(tmp_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


BAD_QUOTA_ARGS = [
    ("--priority", "11"), ("--priority", "1.5"), ("--weight", "0"), ("--weight", "nan"), ("--weight", "lots"),
    ("--requests-per-minute", "-1"), ("--tokens-per-day", "many"), (), ("--model", "m", "--priority", "1"),
    # an empty key id or model (an unset shell variable) must not fall back to the whole team
    ("--key-id", "", "--requests-per-minute", "0"), ("--model", "", "--requests-per-minute", "0"),
    ("--key-id", "k" * 33, "--requests-per-minute", "1"), ("--model", "bad\nname", "--requests-per-minute", "1"),
]


def test_ward_quotas_refuses_bad_values_and_unknown_teams_and_changes_nothing(tmp_path, here):
    assert here("teams", "create", "icu").returncode == 0
    for args in BAD_QUOTA_ARGS:
        refused = here("quotas", "set", "icu", *args)
        assert refused.returncode == 2 and refused.stderr and not refused.stdout, args
    for scope in (("--key-id", ""), ("--model", "")):
        refused = here("quotas", "clear", "icu", *scope)
        assert refused.returncode == 2 and refused.stderr and not refused.stdout, scope
    refused = here("quotas", "set", "nobody", "--priority", "1")
    assert refused.returncode == 2 and "no team 'nobody'" in refused.stderr
    assert [e["data"]["action"] for e in admin_entries(tmp_path)] == ["team.create"]
    assert not (tmp_path / "quota" / "overrides.json").exists()


def test_ward_approvals_records_the_boards_decisions_in_the_audit_log(tmp_path, here):
    assert here("teams", "create", "icu").returncode == 0
    assert here("approvals", "set", "llama-70b", "pilot", "--note", "board 2026-14").returncode == 0
    assert here("approvals", "set", "old-model", "retired").returncode == 0
    assert here("approvals", "allow", "icu", "llama-70b", "old-model").returncode == 0
    shown = as_json(here("approvals", "show", "icu", "--json"))
    assert shown["allowed_models"] == ["llama-70b", "old-model"]
    assert {m["model"]: (m["allowed"], m["reason"]) for m in shown["models"]} == {
        "llama-70b": (True, "listed"), "old-model": (False, "retired")}
    assert here("approvals", "allow", "icu", "--all-approved").returncode == 0
    assert here("approvals", "clear", "old-model").returncode == 0
    listed = as_json(here("approvals", "list", "--json"))
    assert [(m["model"], m["status"], m["note"]) for m in listed["models"]] == [("llama-70b", "pilot", "board 2026-14")]
    assert listed["allow_lists"] == {}
    assert here("approvals", "set", "x", "banned").returncode == 2
    assert here("approvals", "allow", "icu").returncode == 2  # neither models nor a flag: refused
    assert here("approvals", "allow", "nobody", "--none").returncode == 2
    entries = admin_entries(tmp_path)[1:]
    assert [(e["data"]["action"], e["data"]["target"]) for e in entries] == [
        ("model.status", "model:llama-70b"), ("model.status", "model:old-model"), ("team.models", "team:icu"),
        ("team.models", "team:icu"), ("model.status_clear", "model:old-model")]
    assert entries[3]["data"]["before"] == {"allowed_models": ["llama-70b", "old-model"]}
    assert entries[3]["data"]["after"] == {"allowed_models": None}
    verify = here("audit", "verify", "--data-dir", str(tmp_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.anyio
async def test_what_the_cli_sets_is_in_force_in_a_running_gateway_on_the_same_data_directory(tmp_path):
    import anyio

    from governance_support import EMBED_MODEL, bearer, chat, fake_workers, governed_gateway, make_team

    url = f"sqlite:///{tmp_path / 'ward.db'}"
    (tmp_path / "quotas.yaml").write_text("defaults: {}\n")
    async with fake_workers() as workers, governed_gateway(url, tmp_path, workers, quota_file=tmp_path / "quotas.yaml") as gw:
        key = make_team(url, "icu", "user")["user"]
        assert len((await gw.client.get("/v1/models", headers=bearer(key))).json()["data"]) == 3
        for args in (("quotas", "set", "icu", "--priority", "-5", "--weight", "4", "--requests-per-minute", "2"),
                     ("approvals", "allow", "icu", EMBED_MODEL, "fake-chat")):
            done = await anyio.to_thread.run_sync(lambda: ward(tmp_path, *args))
            assert done.returncode == 0, done.stderr
        with anyio.fail_after(10):
            while True:
                models = (await gw.client.get("/v1/models", headers=bearer(key))).json()["data"]
                answer = await gw.client.post("/v1/chat/completions", json=chat(), headers=bearer(key))
                # fake-pilot (unreviewed here) is visible until the allow-list is in force
                if sorted(m["id"] for m in models) == ["fake-chat", EMBED_MODEL] and answer.headers.get("x-ratelimit-limit-requests") == "2":
                    break
                await anyio.sleep(0.1)
        assert (gw.sent()[-1].team, gw.sent()[-1].team_priority, gw.sent()[-1].team_weight) == ("icu", -5, 4.0)
