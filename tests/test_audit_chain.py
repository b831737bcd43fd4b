"""The chain store: gap-free sequence, chained hashes, signed head and checkpoints, on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import exc, func, select, update

from gateway.audit.canonical import GENESIS_HASH, as_utc
from gateway.audit.capture import CaptureLevel, Redactor
from gateway.audit.chain import CHECKPOINTS, ENTRIES, HEAD
from gateway.audit.entries import EntryDraft, EntryKind
from gateway.audit.records import request_draft
from gateway.audit.signing import Signer, TrustedKeys, public_key_path_for
from gateway.audit.verify import verify_chain
from test_audit_support import db_url, engine, make_store, pg_module_url, request_end, request_start, signer, trusted  # noqa: F401


def _drafts(n: int, start: int = 0) -> list[EntryDraft]:
    return [request_draft(request_start(i), request_end(i), CaptureLevel.FULL, Redactor()) for i in range(start, start + n)]


def test_appends_are_numbered_without_gaps_and_chained(engine, signer, trusted):
    store = make_store(engine, signer)
    first = store.append(_drafts(3))
    second = store.append(_drafts(2, start=3))
    assert [r.seq for r in first.refs + second.refs] == [1, 2, 3, 4, 5]
    with engine.connect() as conn:
        rows = conn.execute(select(ENTRIES).order_by(ENTRIES.c.seq)).all()
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(rows[i].prev_hash == rows[i - 1].entry_hash for i in range(1, len(rows)))
    assert [r.request_id for r in rows] == [f"req-{i}" for i in range(5)]
    report = verify_chain(engine, trusted)
    assert report.ok, report.problems
    assert (report.entries, report.first_seq, report.last_seq, report.head_checked) == (5, 1, 5, True)


def test_head_is_signed_over_the_last_entry(engine, signer, trusted):
    store = make_store(engine, signer)
    refs = store.append(_drafts(4)).refs
    with engine.connect() as conn:
        head = conn.execute(select(HEAD)).one()
    assert (head.last_seq, head.last_hash, head.key_id) == (4, refs[-1].entry_hash, signer.key_id)
    assert trusted.check(head.last_seq, head.last_hash, as_utc(head.last_time), head.key_id, head.signature) is None


def test_checkpoints_every_n_records_are_signed_and_match_their_entry(engine, signer, trusted):
    store = make_store(engine, signer, every_records=5)
    for _ in range(6):
        store.append(_drafts(2))
    with engine.connect() as conn:
        checkpoints = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq)).all()
        hashes = dict(conn.execute(select(ENTRIES.c.seq, ENTRIES.c.entry_hash)).all())
    # The first batch checkpoints at once (no checkpoint yet); later ones once 5 records have passed.
    assert [c.seq for c in checkpoints] == [2, 8]
    for c in checkpoints:
        assert c.entry_hash == hashes[c.seq]
        assert trusted.check(c.seq, c.entry_hash, as_utc(c.created_at), c.key_id, c.signature) is None
    report = verify_chain(engine, trusted)
    assert report.ok and report.checkpoints_checked == 2


def test_time_based_checkpoint_is_written_once_per_head(engine, signer):
    store = make_store(engine, signer, every_records=1000, every_s=0.005)
    store.append(_drafts(1))  # first checkpoint at seq 1
    time.sleep(0.01)
    store.append(_drafts(1, start=1))  # seq 2: due by time
    time.sleep(0.01)
    assert store.checkpoint_if_due() is None  # nothing new since seq 2
    store.append(_drafts(1, start=2))
    with engine.connect() as conn:
        assert list(conn.execute(select(CHECKPOINTS.c.seq).order_by(CHECKPOINTS.c.seq)).scalars()) == [1, 2, 3]
    assert make_store(engine, signer, every_s=3600).checkpoint_if_due(force=True) is None


def test_forced_checkpoint_at_the_head(engine, signer):
    store = make_store(engine, signer, every_records=1000, every_s=3600)
    store.append(_drafts(1))
    store.append(_drafts(3, start=1))
    assert store.checkpoint_if_due() is None
    assert store.checkpoint_if_due(force=True) == 4


def test_skip_existing_makes_reappending_idempotent(engine, signer, trusted):
    store = make_store(engine, signer)
    drafts = _drafts(3)
    store.append(drafts[:2])
    result = store.append(drafts, skip_existing=True)
    assert result.skipped == 2 and [r.seq for r in result.refs] == [3]
    assert verify_chain(engine, trusted).entries == 3


def test_recorded_time_never_goes_backwards(engine, signer, trusted):
    store = make_store(engine, signer)
    store.append(_drafts(1))
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    with engine.begin() as conn:  # another writer whose clock runs ahead appended last
        conn.execute(update(HEAD).values(last_time=future))
    store.append(_drafts(1, start=1))
    with engine.connect() as conn:
        times = [as_utc(t) for t in conn.execute(select(ENTRIES.c.recorded_at).order_by(ENTRIES.c.seq)).scalars()]
    assert times[1] == future and times[0] < times[1]


def test_signatures_by_an_untrusted_key_fail_verification(engine, signer, tmp_path):
    make_store(engine, signer).append(_drafts(2))
    stranger = Signer.load_or_create(tmp_path / "other.pem")
    report = verify_chain(engine, TrustedKeys.from_keys([stranger.public_key]))
    assert not report.ok
    assert any("not trusted" in p.message for p in report.problems)


def test_signing_key_is_created_private_with_its_public_half(tmp_path):
    path = tmp_path / "keys" / "checkpoint-key.pem"
    first = Signer.load_or_create(path)
    again = Signer.load_or_create(path)
    assert first.key_id == again.key_id
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert public_key_path_for(path).read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_admin_entries_share_the_chain(engine, signer, trusted):
    store = make_store(engine, signer)
    store.append(_drafts(1))
    store.append([EntryDraft.build(EntryKind.ADMIN, datetime.now(timezone.utc), {"action": "team.create"}, team="cardiology", status="ok")])
    store.append(_drafts(1, start=1))
    with engine.connect() as conn:
        kinds = list(conn.execute(select(ENTRIES.c.kind).order_by(ENTRIES.c.seq)).scalars())
    assert kinds == ["request", "admin", "request"]
    assert verify_chain(engine, trusted).ok


def test_appends_share_one_kept_connection_and_survive_its_loss(engine, signer, trusted):
    """The store keeps its connection between appends; when the database drops it (a restart, an
    idle timeout), the next append reconnects instead of failing."""
    store = make_store(engine, signer)
    store.append(_drafts(2))
    kept = store._held
    store.append(_drafts(2, start=2))
    assert store._held is kept, "the second append reused the kept connection"
    if engine.dialect.name == "postgresql":
        backend = kept.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        kept.rollback()
        with engine.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend)})")
            admin.commit()
        time.sleep(0.2)
    else:
        kept.connection.dbapi_connection.close()  # SQLite: the file handle is gone under SQLAlchemy
    store.append(_drafts(2, start=4))
    assert store._held is not kept
    store.close()
    assert store._held is None
    report = verify_chain(engine, trusted)
    assert report.ok and report.entries == 6


def test_a_statement_failing_on_the_driver_raises_sqlalchemys_error_and_leaves_the_chain_as_it_was(engine, signer, trusted):
    """The append's statements run on the driver's cursor (append_sql.py): a failure there still
    raises SQLAlchemy's exception type, rolls the whole batch back, and the next append goes on."""
    store = make_store(engine, signer)
    first = _drafts(2)
    store.append(first)
    with pytest.raises(exc.IntegrityError):
        store.append(_drafts(1, start=2) + [first[0]])  # the same entry id twice: a unique violation
    with engine.connect() as conn:
        assert conn.execute(select(HEAD.c.last_seq)).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(ENTRIES)).scalar_one() == 2
    assert [r.seq for r in store.append(_drafts(1, start=3)).refs] == [3]
    report = verify_chain(engine, trusted)
    assert report.ok and report.entries == 3


def test_concurrent_appends_from_threads_stay_gap_free(engine, signer, trusted):
    """One thread uses the kept connection; the others take pooled ones, and the head lock orders them."""
    import threading

    store = make_store(engine, signer)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(10):
                store.append(_drafts(1, start=offset + i))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    assert not errors
    report = verify_chain(engine, trusted)
    assert report.ok and report.entries == 40


def test_an_export_signed_before_selections_were_signed_still_checks_out(signer, trusted):
    # Exports made before the signature line carried the selection end without one: their statement
    # has no selection and must still verify; the same signature never passes with one added.
    from gateway.audit.canonical import utc_iso
    from gateway.audit.export import check_signed_export

    line = b'{"id": "r1"}\n'
    now = datetime.now(timezone.utc)
    sha = hashlib.sha256(line).hexdigest()
    trailer = {"object": "audit.export.signature", "through_seq": 7, "records": 1, "sha256": sha, "time": utc_iso(now),
               "key_id": signer.key_id, "signature": signer.sign_export(7, sha, 1, now)}
    assert check_signed_export([line, json.dumps(trailer).encode()], trusted)[1] is None
    added = {**trailer, "selection": {"filter": {}, "teams": None, "kinds": None}}
    assert check_signed_export([line, json.dumps(added).encode()], trusted)[1] == "signature is invalid"
    assert check_signed_export([line, json.dumps({**trailer, "selection": "all"}).encode()], trusted)[1] == (
        "the export signature is malformed")
