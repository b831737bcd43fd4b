"""AuditLog: durable before return, group commit, capture levels per team, typed errors."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest
from sqlalchemy import insert, select

from gateway.audit.capture import CaptureLevel
from gateway.audit.chain import CHECKPOINTS, ENTRIES
from gateway.audit.errors import AuditClosed, AuditInputError, AuditUnavailable
from gateway.audit.records import OpenRequest, RequestEnd, RequestStatus, request_draft
from gateway.audit.team_levels import TeamCaptureLevels
from gateway.audit.verify import verify_chain
from gateway.db.models_identity import Team
from test_audit_support import (  # noqa: F401
    ALICE,
    BOB,
    db_url,
    engine,
    make_log,
    pg_module_url,
    request_end,
    request_start,
    run_with_log,
    signer,
    trusted,
)


def _entries(engine):
    with engine.connect() as conn:
        return conn.execute(select(ENTRIES).order_by(ENTRIES.c.seq)).all()


def test_record_request_is_committed_before_it_returns(engine, signer):
    seen = {}

    async def body(log):
        ref = await log.record_request(request_start(1), request_end(1))
        seen["rows"] = _entries(engine)  # read at once, from another connection
        return ref

    ref = run_with_log(make_log(engine, signer), body)
    (row,) = seen["rows"]
    assert (row.seq, row.entry_hash) == (ref.seq, ref.entry_hash)
    data = json.loads(row.data)
    assert (row.kind, row.request_id, row.team, row.subject, row.model, row.status, row.http_status) == (
        "request", "req-1", "cardiology", "key-alice", "llama-8b", "ok", 200,
    )
    assert data["principal"] == {"subject": "key-alice", "team": "cardiology", "auth_method": "api_key", "key_id": "key-alice", "cert_subject": None, "roles": ["user"]}
    assert data["prompt"][0]["content"].startswith("Question 1")
    assert data["params"] == {"temperature": 0.5, "max_tokens": 64, "stop": ["\n\n"]}
    assert (data["prompt_tokens"], data["completion_tokens"], data["finish_reason"]) == (21, 11, "stop")
    assert data["response"] == "Answer 1: call 555-123-4567."
    assert (data["received_at"], data["first_token_at"], data["finished_at"]) == (
        "2025-03-01T12:00:01.000000Z", "2025-03-01T12:00:01.500000Z", "2025-03-01T12:00:02.000000Z",
    )
    assert (data["endpoint"], data["client_address"], data["worker"], data["capture_level"]) == ("/v1/chat/completions", "10.0.0.7", "worker-a:50051", "full")


def test_open_is_durable_before_it_returns_and_complete_closes_it(engine, signer):
    seen = {}

    async def body(log):
        handle = await log.open(request_start(2, BOB))
        seen["after_open"] = [(r.kind, r.status) for r in _entries(engine)]
        await log.complete(handle, request_end(2, status=RequestStatus.CANCELLED, http_status=None, response="partial"))
        with pytest.raises(AuditInputError):
            await log.complete(handle, request_end(2))  # exactly one completion per open
        with pytest.raises(AuditInputError):
            await log.complete(OpenRequest(request_id="never-opened"), request_end(3))

    run_with_log(make_log(engine, signer), body)
    assert seen["after_open"] == [("request_open", None)]
    rows = _entries(engine)
    assert [(r.kind, r.request_id, r.status, r.team) for r in rows] == [
        ("request_open", "req-2", None, "radiology"),
        ("request_complete", "req-2", "cancelled", "radiology"),
    ]
    complete = json.loads(rows[1].data)
    assert complete["open_entry_id"] == rows[0].entry_id and complete["response"] == "partial"


def test_concurrent_requests_share_transactions(engine, signer, trusted):
    async def body(log):
        refs = await asyncio.gather(*(log.record_request(request_start(i), request_end(i)) for i in range(300)))
        return refs, log.stats

    refs, stats = run_with_log(make_log(engine, signer), body)
    assert sorted(r.seq for r in refs) == list(range(1, 301))
    assert stats.batches < 100 and stats.largest_batch > 3  # group commit, not one transaction each
    assert verify_chain(engine, trusted).ok


def test_capture_level_follows_the_team_setting(engine, signer):
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(insert(Team.__table__), [
            {"name": "cardiology", "display_name": "", "capture_level": "redacted", "disabled": False, "created_at": now},
            {"name": "radiology", "display_name": "", "capture_level": "metadata", "disabled": False, "created_at": now},
        ])
    levels = TeamCaptureLevels(engine, default=CaptureLevel.FULL)

    async def body(log):
        await log.record_request(request_start(1, ALICE), request_end(1))  # cardiology: redacted
        handle = await log.open(request_start(2, BOB))  # radiology: metadata
        await log.complete(handle, request_end(2))
        await log.record_request(request_start(3, principal=None, auth_method="api_key"), request_end(3, status="rejected", http_status=401))

    run_with_log(make_log(engine, signer, levels=levels), body)
    redacted, opened, completed, anonymous = (json.loads(r.data) for r in _entries(engine))
    assert redacted["capture_level"] == "redacted"
    assert redacted["prompt"][0]["content"] == "Question 1: patient [EMAIL], [MRN], seen [DATE]?"
    assert redacted["response"] == "Answer 1: call [PHONE]."
    assert redacted["params"]["temperature"] == 0.5
    assert opened["capture_level"] == "metadata" and opened["prompt"] is None and len(opened["prompt_sha256"]) == 64
    assert opened["params"] == {"temperature": 0.5, "max_tokens": 64}
    assert completed["response"] is None and len(completed["response_sha256"]) == 64  # the open's level
    assert anonymous["capture_level"] == "metadata" and anonymous["principal"]["auth_method"] == "api_key"
    assert anonymous["status"] == "rejected" and anonymous["http_status"] == 401


def test_a_malformed_entry_fails_alone(engine, signer):
    async def body(log):
        return await asyncio.gather(
            log.record_request(request_start(1), request_end(1)),
            log.record_request(request_start(2, params={"temperature": float("nan")}), request_end(2)),
            log.record_request(request_start(3), RequestEnd(status="weird")),
            log.record_request(request_start(4), request_end(4)),
            return_exceptions=True,
        )

    results = run_with_log(make_log(engine, signer), body)
    assert isinstance(results[1], AuditInputError) and isinstance(results[2], AuditInputError)
    assert [r.request_id for r in _entries(engine)] == ["req-1", "req-4"]


def test_completion_from_a_cancelled_task_is_still_written(engine, signer):
    async def body(log):
        handle = await log.open(request_start(5))
        started = asyncio.Event()

        async def stream():
            try:
                started.set()
                await asyncio.sleep(3600)  # the client goes away mid-stream
            finally:
                await log.complete(handle, request_end(5, status=RequestStatus.CANCELLED))

        task = asyncio.create_task(stream())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_with_log(make_log(engine, signer), body)
    assert [(r.kind, r.status) for r in _entries(engine)] == [("request_open", None), ("request_complete", "cancelled")]


def test_admin_changes_are_chained_and_never_hold_secrets(engine, signer):
    async def body(log):
        await log.record_admin_change(ALICE, "key.create", "key:k1", None, {"id": "k1", "team": "cardiology", "role": "user"})
        await log.record_admin_change(ALICE, "team.create", "team:oncology", None, {"name": "oncology", "capture_level": "full"})
        with pytest.raises(AuditInputError):
            await log.record_admin_change(ALICE, "key.create", "key:k2", None, {"id": "k2", "secret_hash": "x"})

    run_with_log(make_log(engine, signer), body)
    rows = _entries(engine)
    assert [(r.kind, r.team, r.subject) for r in rows] == [("admin", "cardiology", "key-alice"), ("admin", "oncology", "key-alice")]
    assert json.loads(rows[0].data)["action"] == "key.create"


def test_calls_after_close_are_refused(engine, signer):
    log = make_log(engine, signer)
    run_with_log(log, lambda log: asyncio.sleep(0))

    async def late():
        await log.record_request(request_start(1), request_end(1))

    with pytest.raises(AuditClosed):
        asyncio.run(late())


def test_idle_writer_writes_time_based_checkpoints(engine, signer, trusted):
    async def body(log):
        await log.record_request(request_start(1), request_end(1))  # first checkpoint (seq 1)
        await log.record_request(request_start(2), request_end(2))
        await asyncio.sleep(0.8)  # idle: the time-based checkpoint at seq 2 comes from the writer's tick

    run_with_log(make_log(engine, signer, every_s=0.3, checkpoint_check_s=0.1), body)
    with engine.connect() as conn:
        assert list(conn.execute(select(CHECKPOINTS.c.seq).order_by(CHECKPOINTS.c.seq)).scalars())[-1] == 2
    assert verify_chain(engine, trusted).ok


def test_a_lone_requests_entry_is_written_inline_and_durable_at_once(engine, signer, trusted):
    """alone=True on a log that writes inline: the future is resolved before the call first suspends
    (no hand-off to the writer thread), the entry is committed, the chain verifies."""
    seen = {}

    async def body(log):
        future = log._submit(lambda: request_draft(request_start(1), request_end(1), CaptureLevel.FULL, log.redactor),
                             alone=True)
        seen["done_at_once"] = future.done()
        ref = await future
        seen["rows"] = _entries(engine)
        ref2 = await log.record_request(request_start(2), request_end(2), alone=True)
        return ref, ref2, log.stats

    ref, ref2, stats = run_with_log(make_log(engine, signer, inline_alone=True), body)
    assert seen["done_at_once"] is True
    assert [(r.seq, r.request_id) for r in seen["rows"]] == [(ref.seq, "req-1")]
    assert (ref.seq, ref2.seq) == (1, 2) and stats.entries == 2
    assert verify_chain(engine, trusted).ok


def test_inline_writing_needs_the_logs_consent_an_idle_queue_and_a_working_store(engine, signer):
    seen = {}

    async def body(log):
        future = log._submit(lambda: request_draft(request_start(1), request_end(1), CaptureLevel.FULL, log.redactor),
                             alone=True)
        seen["not_inline"] = not future.done()  # a log without inline_alone hands it to the writer
        await future

    run_with_log(make_log(engine, signer), body)
    assert seen["not_inline"]

    async def queued_first(log):
        # Entries queued before a lone one are written first: the lone one waits its turn.
        earlier = [log._submit(lambda i=i: request_draft(request_start(i), request_end(i), CaptureLevel.FULL,
                                                         log.redactor)) for i in range(10, 15)]
        lone = log._submit(lambda: request_draft(request_start(20), request_end(20), CaptureLevel.FULL, log.redactor),
                           alone=True)
        seen["lone_queued"] = not lone.done()
        refs = [await f for f in (*earlier, lone)]
        return [r.seq for r in refs]

    seqs = run_with_log(make_log(engine, signer, inline_alone=True), queued_first)
    assert seen["lone_queued"]
    assert seqs == sorted(seqs)  # committed in the order they were submitted

    async def after_a_failure(log):
        log.available = False  # as after a failed write: the loop never writes inline then
        future = log._submit(lambda: request_draft(request_start(30), request_end(30), CaptureLevel.FULL,
                                                   log.redactor), alone=True)
        seen["after_failure_queued"] = not future.done()
        await future

    run_with_log(make_log(engine, signer, inline_alone=True), after_a_failure)
    assert seen["after_failure_queued"]


def test_an_inline_write_that_fails_raises_audit_unavailable_and_is_not_kept(engine, signer):
    async def body(log):
        def broken_append(drafts):
            raise AuditUnavailable("the database refused the write")

        log.store.append = broken_append
        with pytest.raises(AuditUnavailable):
            await log.record_request(request_start(1), request_end(1), alone=True)
        return log.available

    assert run_with_log(make_log(engine, signer, inline_alone=True), body) is False
    assert _entries(engine) == []
