"""Mutation tests: every way of tampering with stored rows is caught and the record named."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import delete, insert, select, update

from gateway.audit.canonical import as_utc, entry_hash
from gateway.audit.capture import CaptureLevel, Redactor
from gateway.audit.chain import CHECKPOINTS, ENTRIES, HEAD
from gateway.audit.entries import entry_header
from gateway.audit.records import OpenRequest, admin_draft, complete_draft, open_draft, request_draft
from gateway.audit.verify import read_checkpoints, verify_chain
from test_audit_support import ALICE, BOB, db_url, engine, make_store, pg_module_url, request_end, request_start, signer, trusted  # noqa: F401

N = 30


@pytest.fixture
def log_engine(engine, signer):
    """A log of N entries (whole requests, streams, admin changes), one per transaction, checkpoints every 10."""
    store = make_store(engine, signer, every_records=10)
    redactor = Redactor()
    i = 0
    while i < N:
        if i % 5 == 3:  # a stream: open, then complete
            handle = OpenRequest(request_id=f"req-{i}")
            store.append([open_draft(request_start(i, BOB), CaptureLevel.FULL, redactor, handle)])
            store.append([complete_draft(handle, request_end(i), redactor)])
            i += 2
            continue
        if i % 7 == 6:
            store.append([admin_draft(ALICE, "key.revoke", f"key:k{i}", {"revoked": False}, {"revoked": True}, team="cardiology")])
        else:
            store.append([request_draft(request_start(i), request_end(i), CaptureLevel.FULL, redactor)])
        i += 1
    return engine


def _row(engine, seq):
    with engine.connect() as conn:
        return conn.execute(select(ENTRIES).where(ENTRIES.c.seq == seq)).one()


def _hash_for(row, seq: int, prev: str, data: str | None = None) -> str:
    header = entry_header(
        seq=seq, entry_id=row.entry_id, kind=row.kind, recorded_at=as_utc(row.recorded_at), occurred_at=as_utc(row.occurred_at),
        request_id=row.request_id, team=row.team, subject=row.subject, model=row.model, status=row.status, http_status=row.http_status,
    )
    return entry_hash(prev, header, row.data if data is None else data)


def _set(engine, seq, **values):
    with engine.begin() as conn:
        conn.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values(**values))


def _edit_data(engine, seq, change):
    data = json.loads(_row(engine, seq).data)
    change(data)
    _set(engine, seq, data=json.dumps(data, sort_keys=True, separators=(",", ":")))


def _rehash(engine, seq):
    """What an insider covering their tracks does: recompute the changed row's own hash."""
    row = _row(engine, seq)
    _set(engine, seq, entry_hash=_hash_for(row, seq, row.prev_hash))


def _first(engine, trusted, external=()):
    report = verify_chain(engine, trusted, external)
    assert not report.ok, "tampering went unnoticed"
    return report.first_problem


def test_an_untouched_log_verifies(log_engine, trusted):
    report = verify_chain(log_engine, trusted)
    assert report.ok, [p.describe() for p in report.problems]
    assert report.entries == N
    assert report.checkpoints_checked >= 3


def test_changed_prompt_is_named(log_engine, trusted):
    _edit_data(log_engine, 12, lambda d: d["prompt"][0].update(content="an innocent question"))
    problem = _first(log_engine, trusted)
    assert (problem.seq, problem.request_id) == (12, _row(log_engine, 12).request_id)
    assert problem.message.startswith("changed")


def test_changed_token_count_is_named(log_engine, trusted):
    _edit_data(log_engine, 15, lambda d: d.update(completion_tokens=d["completion_tokens"] + 1000))
    assert _first(log_engine, trusted).seq == 15


def test_changed_and_rehashed_record_is_named(log_engine, trusted):
    _edit_data(log_engine, 9, lambda d: d.update(prompt_tokens=1))
    _rehash(log_engine, 9)
    problem = _first(log_engine, trusted)
    assert problem.seq == 9 and problem.message.startswith("changed")


def test_changed_indexed_column_is_named(log_engine, trusted):
    _set(log_engine, 5, team="someone-else")
    assert _first(log_engine, trusted).seq == 5


def test_deleted_row_is_named(log_engine, trusted):
    with log_engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq == 17))
    problem = _first(log_engine, trusted)
    assert problem.seq == 17 and "deleted" in problem.message


def test_deleted_row_with_renumbered_successors_is_named(log_engine, trusted):
    last = verify_chain(log_engine, trusted).last_seq
    with log_engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq == 17))
        for seq in range(18, last + 1):
            conn.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values(seq=seq - 1))
    assert _first(log_engine, trusted).seq == 17


def _forged_after(engine, after_seq: int, seq: int) -> dict:
    """A forged request entry that links correctly to the record at after_seq (an insider knows the scheme)."""
    template = _row(engine, after_seq)
    data = json.dumps({"prompt": "forged", "status": "ok"}, separators=(",", ":"))
    row = dict(template._mapping)
    row.update(seq=seq, entry_id=str(uuid.uuid4()), request_id="forged", data=data, prev_hash=template.entry_hash, kind="request", status="ok")
    fake = type("Row", (), row)
    row["entry_hash"] = _hash_for(fake, seq, template.entry_hash, data)
    return row


def test_forged_row_appended_past_the_head_is_named(log_engine, trusted):
    last = verify_chain(log_engine, trusted).last_seq
    with log_engine.begin() as conn:
        conn.execute(insert(ENTRIES), _forged_after(log_engine, last, last + 1))
    problem = _first(log_engine, trusted)
    assert problem.seq == last + 1 and problem.message.startswith("inserted")


def test_forged_row_inserted_in_the_middle_is_named(log_engine, trusted):
    last = verify_chain(log_engine, trusted).last_seq
    forged = _forged_after(log_engine, 19, 20)
    with log_engine.begin() as conn:
        for seq in range(last, 19, -1):  # make room: shift 20.. up by one
            conn.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values(seq=seq + 1))
        conn.execute(insert(ENTRIES), forged)
    problem = _first(log_engine, trusted)
    assert problem.seq == 20 and problem.message.startswith("inserted")


def _swap(engine, a: int, b: int) -> None:
    with engine.begin() as conn:
        conn.execute(update(ENTRIES).where(ENTRIES.c.seq == a).values(seq=-1))
        conn.execute(update(ENTRIES).where(ENTRIES.c.seq == b).values(seq=a))
        conn.execute(update(ENTRIES).where(ENTRIES.c.seq == -1).values(seq=b))


def test_swapped_adjacent_rows_are_named(log_engine, trusted):
    _swap(log_engine, 8, 9)
    problem = _first(log_engine, trusted)
    assert problem.seq == 8 and problem.message.startswith("reordered")


def test_swapped_distant_rows_are_named(log_engine, trusted):
    _swap(log_engine, 6, 22)
    report = verify_chain(log_engine, trusted)
    assert report.first_problem.seq == 6
    assert 22 in {p.seq for p in report.problems}


def test_tail_truncated_past_a_checkpoint_is_named(log_engine, trusted):
    with log_engine.connect() as conn:
        checkpoint = max(read_checkpoints(conn), key=lambda c: c.seq).seq
    with log_engine.begin() as conn:
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq > checkpoint - 3))
    problem = _first(log_engine, trusted)
    assert problem.seq == checkpoint - 2 and "truncated" in problem.message


def test_rollback_to_an_old_signed_state_is_caught_by_exported_checkpoints(log_engine, trusted):
    with log_engine.connect() as conn:
        exported = read_checkpoints(conn)  # kept safe outside the database before the attack
    target = sorted(c.seq for c in exported)[-2]
    cp = next(c for c in exported if c.seq == target)
    with log_engine.begin() as conn:
        # Truncate to an earlier checkpoint, drop the later checkpoints and reuse that checkpoint's
        # signature for the head: the database alone now looks like the log as it stood then.
        conn.execute(delete(ENTRIES).where(ENTRIES.c.seq > target))
        conn.execute(delete(CHECKPOINTS).where(CHECKPOINTS.c.seq > target))
        conn.execute(update(HEAD).values(last_seq=target, last_hash=cp.entry_hash, last_time=cp.time, signature=cp.signature, last_checkpoint_seq=target))
    assert verify_chain(log_engine, trusted).ok  # indistinguishable from a restored backup...
    problem = _first(log_engine, trusted, exported)  # ...but not from the exported checkpoints
    assert problem.seq == target + 1 and "truncated" in problem.message


def test_rewritten_and_rehashed_suffix_is_caught_by_signatures(log_engine, trusted):
    last = verify_chain(log_engine, trusted).last_seq
    _edit_data(log_engine, 24, lambda d: d.update(note="rewritten"))
    prev = _row(log_engine, 23).entry_hash
    for seq in range(24, last + 1):  # recompute the whole chain after the change
        row = _row(log_engine, seq)
        new_hash = _hash_for(row, seq, prev)
        _set(log_engine, seq, prev_hash=prev, entry_hash=new_hash)
        prev = new_hash
    with log_engine.begin() as conn:
        conn.execute(update(HEAD).values(last_hash=prev))
    report = verify_chain(log_engine, trusted)
    assert not report.ok
    with log_engine.connect() as conn:
        covering = [c.seq for c in read_checkpoints(conn) if c.seq < 24]
    assert report.first_problem.seq == max(covering) + 1  # the first record no signature vouches for
    assert "rewritten" in report.first_problem.message or "vouched" in report.first_problem.message


def test_forged_checkpoint_is_rejected(log_engine, trusted):
    with log_engine.begin() as conn:
        conn.execute(
            insert(CHECKPOINTS),
            {"seq": 3, "entry_hash": "0" * 64, "created_at": datetime.now(timezone.utc), "key_id": "deadbeefdeadbeef", "signature": "AAAA"},
        )
    problem = _first(log_engine, trusted)
    assert problem.seq == 3 and "not trusted" in problem.message
