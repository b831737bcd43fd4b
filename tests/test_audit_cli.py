"""`ward audit ...`: verify (exit codes, naming the bad record), export, checkpoints, public-key, purge, bench."""
from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest
from sqlalchemy import select, update

from gateway.audit.chain import CHECKPOINTS, ENTRIES, HEAD
from gateway.audit.service import build_audit_services
from gateway.audit.settings import AuditSettings
from test_audit_support import PG_SERVER_URL, pg_module_url, request_end, request_start, reset_log  # noqa: F401
from ward.cli import main as ward


def _write_log(data_dir, url=None, n=12) -> None:
    services = build_audit_services(AuditSettings(database_url=url, checkpoint_every_records=5), data_dir)

    async def body():
        await services.log.start()
        for i in range(n):
            await services.log.record_request(request_start(i), request_end(i))
        await services.log.close()

    asyncio.run(body())


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WARD_DATABASE_URL", raising=False)
    _write_log(tmp_path)
    return tmp_path


def _engine(data_dir):
    from gateway.audit.service import create_audit_engine

    return create_audit_engine(f"sqlite:///{data_dir / 'ward.db'}")


def test_verify_passes_on_an_intact_log(data_dir, capsys):
    assert ward(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: the audit log is intact: 12 records (seq 1..12)") and "head signed" in out


def test_verify_fails_and_names_the_changed_record(data_dir, capsys):
    engine = _engine(data_dir)
    with engine.begin() as conn:
        row = conn.execute(select(ENTRIES.c.data).where(ENTRIES.c.seq == 7)).scalar_one()
        conn.execute(update(ENTRIES).where(ENTRIES.c.seq == 7).values(data=row.replace('"prompt_tokens":26', '"prompt_tokens":2')))
    engine.dispose()
    assert ward(["audit", "verify", "--data-dir", str(data_dir)]) == 1
    assert "FAILED: first bad record: record seq 7 (request req-6): changed" in capsys.readouterr().out


def test_verify_against_exported_checkpoints_catches_a_rollback(data_dir, tmp_path, capsys):
    exported = tmp_path / "checkpoints.jsonl"
    assert ward(["audit", "checkpoints", "--data-dir", str(data_dir), "--now", "--out", str(exported)]) == 0
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [c["seq"] for c in lines] == [1, 6, 11, 12] and all(set(c) == {"seq", "entry_hash", "time", "key_id", "signature"} for c in lines)
    engine = _engine(data_dir)
    with engine.begin() as conn:  # roll the database back to its state at checkpoint 6
        cp = conn.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.seq == 6)).one()
        conn.execute(ENTRIES.delete().where(ENTRIES.c.seq > 6))
        conn.execute(CHECKPOINTS.delete().where(CHECKPOINTS.c.seq > 6))
        conn.execute(update(HEAD).values(last_seq=6, last_hash=cp.entry_hash, last_time=cp.created_at, signature=cp.signature, last_checkpoint_seq=6))
    engine.dispose()
    assert ward(["audit", "verify", "--data-dir", str(data_dir)]) == 0
    capsys.readouterr()
    assert ward(["audit", "verify", "--data-dir", str(data_dir), "--checkpoints", str(exported)]) == 1
    assert "first bad record: record seq 7: missing" in capsys.readouterr().out


def test_verify_with_a_given_public_key_only(data_dir, tmp_path, capsys):
    public = tmp_path / "ward-audit.pub.pem"
    assert ward(["audit", "public-key", "--data-dir", str(data_dir)]) == 0
    public.write_text(capsys.readouterr().out)
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert ward(["audit", "verify", "--data-dir", str(data_dir), "--public-key", str(public)]) == 0


def test_verify_without_any_trusted_key_cannot_vouch(data_dir, capsys):
    for path in (data_dir / "audit").glob("checkpoint-key*"):
        path.unlink()
    assert ward(["audit", "verify", "--data-dir", str(data_dir)]) == 2
    assert "no trusted public key" in capsys.readouterr().err


def test_verify_of_a_missing_database_is_an_error(tmp_path, capsys):
    assert ward(["audit", "verify", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "no database" in capsys.readouterr().err


def test_verify_on_postgresql(pg_module_url, tmp_path, capsys):
    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(pg_module_url)
    reset_log(engine)
    engine.dispose()
    _write_log(tmp_path, url=pg_module_url, n=5)
    key = tmp_path / "audit" / "checkpoint-key.pem"
    assert ward(["audit", "verify", "--database-url", pg_module_url, "--signing-key", str(key)]) == 0
    assert "5 records" in capsys.readouterr().out


def test_export_writes_records_and_the_read_is_recorded(data_dir, tmp_path, capsys):
    out = tmp_path / "export.csv"
    assert ward(["audit", "export", "--data-dir", str(data_dir), "--format", "csv", "--out", str(out), "--since", "2025-03-01T12:00:05Z"]) == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in rows] == [f"req-{i}" for i in range(5, 12)]
    assert ward(["audit", "export", "--data-dir", str(data_dir), "--kind", "access"]) == 0
    (access,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert access["data"]["action"] == "export" and access["data"]["actor"]["auth_method"] == "local"
    assert access["data"]["query"]["since"] == "2025-03-01T12:00:05.000000Z" and access["data"]["through_seq"] == 12
    assert ward(["audit", "verify", "--data-dir", str(data_dir)]) == 0  # the access records are chained too


def test_export_rejects_a_naive_time(data_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ward(["audit", "export", "--data-dir", str(data_dir), "--since", "2025-03-01T12:00:05"])
    assert exit_info.value.code == 2 and "with a zone" in capsys.readouterr().err


def test_purge_dry_run_and_nothing_due(data_dir, capsys):
    assert ward(["audit", "purge", "--data-dir", str(data_dir), "--dry-run"]) == 0
    assert "nothing to purge" in capsys.readouterr().out
    assert ward(["audit", "purge", "--data-dir", str(data_dir), "--retention-days", "0"]) == 2


@pytest.mark.parametrize("days", ["1000000", "99999999999"])
def test_purge_with_a_retention_longer_than_the_calendar_purges_nothing(data_dir, capsys, days):
    # exit 1 would read as "tampering found"; a traceback is no answer either
    assert ward(["audit", "purge", "--data-dir", str(data_dir), "--retention-days", days, "--dry-run"]) == 0
    assert "nothing to purge" in capsys.readouterr().out


def test_bench_prints_latency_and_throughput_for_both_databases(tmp_path, capsys):
    assert ward(["bench", "audit", "--requests", "40", "--postgres", PG_SERVER_URL, "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "1 client p50/p99 ms" in table and table.count("\n") >= 2
    results = json.loads((tmp_path / "ward_bench_audit.json").read_text())["results"]
    assert set(results) == {"sqlite", "postgresql"}
    for r in results.values():
        assert r["verify_ok"] and r["records_per_s"] > 0 and 0 < r["single_p50_ms"] <= r["single_p99_ms"]


def test_tools_never_make_up_a_signing_key(data_dir, capsys):
    for path in (data_dir / "audit").glob("checkpoint-key*"):
        path.unlink()
    assert ward(["audit", "export", "--data-dir", str(data_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (data_dir / "audit" / "checkpoint-key.pem").exists()


def test_direct_admin_recorder_chains_changes_from_tools(data_dir):
    from gateway.audit.admin_recorder import DirectAdminRecorder
    from gateway.audit.records import Actor

    recorder = DirectAdminRecorder.from_settings(AuditSettings(), data_dir)
    try:
        asyncio.run(recorder.record_admin_change(Actor.local_operator(), "team.create", "team:oncology", None, {"name": "oncology"}))
    finally:
        recorder.close()
    engine = _engine(data_dir)
    with engine.connect() as conn:
        last = conn.execute(select(ENTRIES).order_by(ENTRIES.c.seq.desc()).limit(1)).one()
    engine.dispose()
    assert (last.seq, last.kind, last.team) == (13, "admin", "oncology")
    assert json.loads(last.data)["actor"]["auth_method"] == "local"
    assert ward(["audit", "verify", "--data-dir", str(data_dir)]) == 0


def test_a_fresh_log_gets_a_new_key_but_an_existing_one_never_does(tmp_path, monkeypatch):
    from gateway.audit.errors import SigningKeyError

    monkeypatch.delenv("WARD_DATABASE_URL", raising=False)
    from gateway.audit.service import build_audit_services

    build_audit_services(AuditSettings(), tmp_path).engine.dispose()  # empty log: key created
    assert (tmp_path / "audit" / "checkpoint-key.pem").exists()
    _write_log(tmp_path, n=1)
    (tmp_path / "audit" / "checkpoint-key.pem").unlink()
    with pytest.raises(SigningKeyError, match="already holds 1 entries"):
        build_audit_services(AuditSettings(), tmp_path)
