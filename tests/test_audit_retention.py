"""Retention: purging expired records up to a signed checkpoint keeps the rest verifiable."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, select

from gateway.audit import chain as chain_module
from gateway.audit.capture import CaptureLevel, Redactor
from gateway.audit.chain import CHECKPOINTS, ENTRIES
from gateway.audit.records import Actor, request_draft
from gateway.audit.retention import purge_expired, retention_cutoff
from gateway.audit.settings import AuditSettings
from gateway.audit.verify import verify_chain
from test_audit_support import db_url, engine, make_store, pg_module_url, request_end, request_start, signer, trusted  # noqa: F401

OPERATOR = Actor(subject="local:ops@host", team=None, auth_method="local")
NOW = datetime.now(timezone.utc)
LONG_AGO = NOW - timedelta(days=AuditSettings().retention_days + 30)


@pytest.fixture
def aged_log(engine, signer, monkeypatch):
    """Ten entries written seven years ago (checkpoints at 1, 5, 9), then five written now (checkpoints
    at 11, by time, and 15)."""
    store = make_store(engine, signer, every_records=4)
    clock = {"now": LONG_AGO}
    monkeypatch.setattr(chain_module, "_utcnow", lambda: clock["now"])
    for i in range(15):
        if i == 10:
            clock["now"] = NOW
        store.append([request_draft(request_start(i), request_end(i), CaptureLevel.FULL, Redactor())])
    monkeypatch.undo()
    return store


def _seqs(engine, table):
    with engine.connect() as conn:
        return list(conn.execute(select(table.c.seq).order_by(table.c.seq)).scalars())


def test_default_retention_is_six_years():
    assert AuditSettings().retention_days >= 6 * 365
    assert retention_cutoff(AuditSettings().retention_days, NOW) < NOW - timedelta(days=6 * 365)


def test_purge_removes_expired_records_up_to_a_checkpoint(aged_log, engine, trusted):
    assert _seqs(engine, CHECKPOINTS) == [1, 5, 9, 11, 15]
    result = purge_expired(aged_log, retention_cutoff(AuditSettings().retention_days), OPERATOR)
    assert (result.through_seq, result.removed, result.purge_seq) == (9, 9, 16)
    # Record 10 is expired too, but no checkpoint anchors a cut after it: it stays until the next one.
    assert _seqs(engine, ENTRIES) == list(range(10, 17))
    assert _seqs(engine, CHECKPOINTS) == [9, 11, 15]
    with engine.connect() as conn:
        purge = conn.execute(select(ENTRIES).where(ENTRIES.c.seq == 16)).one()
    assert purge.kind == "purge" and json.loads(purge.data)["through_seq"] == 9
    report = verify_chain(engine, trusted)
    assert report.ok, [p.describe() for p in report.problems]
    assert report.first_seq == 10 and any("purged" in note for note in report.notes)


def test_dry_run_removes_nothing(aged_log, engine):
    result = purge_expired(aged_log, retention_cutoff(AuditSettings().retention_days), OPERATOR, dry_run=True)
    assert (result.through_seq, result.removed, result.purge_seq) == (9, 9, None)
    assert _seqs(engine, ENTRIES) == list(range(1, 16))


def test_nothing_to_purge_within_retention(aged_log, engine):
    result = purge_expired(aged_log, LONG_AGO - timedelta(days=1), OPERATOR)
    assert result.through_seq is None and _seqs(engine, ENTRIES) == list(range(1, 16))


def test_purging_again_later_moves_the_anchor(aged_log, engine, trusted):
    purge_expired(aged_log, retention_cutoff(AuditSettings().retention_days), OPERATOR)
    aged_log.checkpoint_if_due(force=True)  # a checkpoint at the head (16)
    result = purge_expired(aged_log, datetime.now(timezone.utc) + timedelta(seconds=5), OPERATOR)  # everything has expired
    assert result.through_seq == 16
    assert verify_chain(engine, trusted).ok


def test_head_deleted_without_a_purge_record_is_tampering(aged_log, engine, trusted):
    with engine.begin() as conn:  # cut at a checkpoint, as a purge would, but with no purge entry
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq <= 5))
    problem = verify_chain(engine, trusted).first_problem
    assert problem.seq == 1 and "without a purge record" in problem.message


def test_head_deleted_off_a_checkpoint_is_tampering(aged_log, engine, trusted):
    with engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq <= 3))
    problem = verify_chain(engine, trusted).first_problem
    assert problem.seq == 1 and "no signed checkpoint" in problem.message
