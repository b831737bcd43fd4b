"""``ward teams`` and ``ward keys`` write their changes into the audit log (DirectAdminRecorder): one
``admin`` entry per change, committed before the command returns, in a chain ``ward audit verify``
accepts; a host without the log's signing key changes nothing."""
from __future__ import annotations

import json
import subprocess
import sys

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
