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

def ward_json(data_dir, *args: str):
    done = ward(data_dir, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_ward_quotas_sets_only_what_it_is_given_and_each_change_is_an_admin_entry(tmp_path):
    (tmp_path / "quotas.yaml").write_text("defaults: {priority: 2, tokens_per_minute: 5000}\nteams: {icu: {weight: 3}}\n")
    assert ward(tmp_path, "teams", "create", "icu").returncode == 0
    shown = ward_json(tmp_path, "quotas", "show", "icu")
    assert shown["scheduling"] == {"priority": 2, "weight": 3.0, "source": {"priority": "default", "weight": "file"}}
    changed = ward_json(tmp_path, "quotas", "set", "icu", "--priority", "-6", "--requests-per-minute", "40")
    assert changed["scheduling"] == {"priority": -6, "weight": 3.0, "source": {"priority": "admin", "weight": "file"}}
    assert changed["quotas"]["limits"]["requests_per_minute"] == 40
    assert changed["quotas"]["limits"]["tokens_per_minute"] == 5000  # kept: only the given limit changed
    weighted = ward_json(tmp_path, "quotas", "set", "icu", "--weight", "0.5")
    assert weighted["scheduling"]["priority"] == -6  # the admin-set class stays
    model = ward_json(tmp_path, "quotas", "set", "icu", "--model", "llama", "--max-concurrent", "2")
    assert model["quotas"]["models"]["llama"]["limits"]["max_concurrent"] == 2
    cleared = ward_json(tmp_path, "quotas", "clear", "icu")
    assert cleared["scheduling"]["source"] == {"priority": "default", "weight": "file"}
    assert cleared["quotas"]["source"] == "default"
    actions = [(e["data"]["action"], e["data"]["after"].get("source")) for e in admin_entries(tmp_path)[1:]]
    assert actions == [("quota.set", "cli"), ("scheduling.set", "cli"), ("scheduling.set", "cli"), ("quota.set", "cli"),
                       ("quota.clear", "cli"), ("scheduling.clear", "cli")]
    assert all(e["subject"].startswith("cli:") for e in admin_entries(tmp_path))
    verify = ward(tmp_path, "audit", "verify", "--data-dir", str(tmp_path))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def ward_here(capsys, *args: str) -> tuple[int, str, str]:
    """`ward ...` run in this process (the same code path, without a new interpreter's start-up)."""
    from ward.cli import main

    try:
        status = main(list(args))
    except SystemExit as exit_:  # argparse refusing a value
        status = exit_.code
    out = capsys.readouterr()
    return status, out.out, out.err


BAD_QUOTA_ARGS = [
    ("--priority", "11"), ("--priority", "1.5"), ("--weight", "0"), ("--weight", "nan"), ("--weight", "lots"),
    ("--requests-per-minute", "-1"), ("--tokens-per-day", "many"), (), ("--model", "m", "--priority", "1"),
]


def test_ward_quotas_refuses_bad_values_and_unknown_teams_and_changes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WARD_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("WARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("WARD_REDIS_URL", raising=False)
    assert ward_here(capsys, "teams", "create", "icu")[0] == 0
    for args in BAD_QUOTA_ARGS:
        status, out, err = ward_here(capsys, "quotas", "set", "icu", *args)
        assert status == 2 and err and not out, args
    status, _, err = ward_here(capsys, "quotas", "set", "nobody", "--priority", "1")
    assert status == 2 and "no team 'nobody'" in err
    assert [e["data"]["action"] for e in admin_entries(tmp_path)] == ["team.create"]
    assert not (tmp_path / "quota" / "overrides.json").exists()


def test_ward_approvals_records_the_boards_decisions_in_the_audit_log(tmp_path):
    assert ward(tmp_path, "teams", "create", "icu").returncode == 0
    assert ward(tmp_path, "approvals", "set", "llama-70b", "pilot", "--note", "board 2026-14").returncode == 0
    assert ward(tmp_path, "approvals", "set", "old-model", "retired").returncode == 0
    assert ward(tmp_path, "approvals", "allow", "icu", "llama-70b", "old-model").returncode == 0
    shown = ward_json(tmp_path, "approvals", "show", "icu")
    assert shown["allowed_models"] == ["llama-70b", "old-model"]
    assert {m["model"]: (m["allowed"], m["reason"]) for m in shown["models"]} == {
        "llama-70b": (True, "listed"), "old-model": (False, "retired")}
    assert ward(tmp_path, "approvals", "allow", "icu", "--all-approved").returncode == 0
    assert ward(tmp_path, "approvals", "clear", "old-model").returncode == 0
    listed = ward_json(tmp_path, "approvals", "list")
    assert [(m["model"], m["status"], m["note"]) for m in listed["models"]] == [("llama-70b", "pilot", "board 2026-14")]
    assert listed["allow_lists"] == {}
    assert ward(tmp_path, "approvals", "set", "x", "banned").returncode == 2
    assert ward(tmp_path, "approvals", "allow", "icu").returncode == 2  # neither models nor a flag: refused
    assert ward(tmp_path, "approvals", "allow", "nobody", "--none").returncode == 2
    entries = admin_entries(tmp_path)[1:]
    assert [(e["data"]["action"], e["data"]["target"]) for e in entries] == [
        ("model.status", "model:llama-70b"), ("model.status", "model:old-model"), ("team.models", "team:icu"),
        ("team.models", "team:icu"), ("model.status_clear", "model:old-model")]
    assert entries[3]["data"]["before"] == {"allowed_models": ["llama-70b", "old-model"]}
    assert entries[3]["data"]["after"] == {"allowed_models": None}
    verify = ward(tmp_path, "audit", "verify", "--data-dir", str(tmp_path))
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


@pytest.fixture
def anyio_backend():
    return "asyncio"
