"""Real writer processes: several gateways on one database, and a gateway killed with SIGKILL."""
from __future__ import annotations

import collections
import signal
import threading
import time

from sqlalchemy import select

from gateway.audit.chain import ENTRIES
from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
from gateway.audit.service import create_audit_engine
from gateway.audit.signing import Signer, TrustedKeys
from gateway.audit.spool import Spool
from gateway.audit.verify import verify_chain
from test_audit_support import (  # noqa: F401
    db_url, go, go_past_first, make_log, pg_module_url, run_with_log, set_database_available, spawn_writer)

ALL = ReadScope(teams=None, content=True, kinds=None)


def _trusted(data_dir) -> TrustedKeys:
    return TrustedKeys.from_keys([Signer.load_or_create(data_dir / "audit" / "checkpoint-key.pem").public_key])


def _records(url: str) -> dict[str, dict]:
    engine = create_audit_engine(url)
    try:
        return {r["id"]: r for r in AuditReader(engine).iter_records(RecordFilter(kind="request"), ALL, through_seq=10**12)}
    finally:
        engine.dispose()


def test_three_writer_processes_keep_one_complete_chain(db_url, tmp_path):
    Signer.load_or_create(tmp_path / "audit" / "checkpoint-key.pem")  # one key, shared by the gateways
    per_writer = 120
    writers = [spawn_writer(db_url, tmp_path, f"gw{n}", per_writer, 12, barrier=True) for n in range(3)]
    go(*writers)
    early = go_past_first(*writers)  # every writer's first request is in the chain before any goes on
    outputs = [w.communicate(timeout=120) for w in writers]
    for writer, lines, (out, err) in zip(writers, early, outputs):
        assert writer.returncode == 0, err
        assert "".join(lines).count("DONE") + out.count("DONE") == per_writer
    records = _records(db_url)
    assert len(records) == 3 * per_writer  # exactly one record per request
    assert all(r["complete"] and r["status"] == "ok" for r in records.values())
    engine = create_audit_engine(db_url)
    try:
        report = verify_chain(engine, _trusted(tmp_path))
        with engine.connect() as conn:
            writers_in_order = [rid.split("-")[0] for rid in conn.execute(select(ENTRIES.c.request_id).order_by(ENTRIES.c.seq)).scalars()]
    finally:
        engine.dispose()
    assert report.ok, [p.describe() for p in report.problems]
    assert report.entries == 3 * per_writer + 2 * per_writer  # two of every three requests are streams (open + complete)
    runs = collections.Counter(a for a, b in zip(writers_in_order, writers_in_order[1:] + [None]) if a != b)
    # The processes' appends really interleaved. (SQLite's busy handler is not fair: a waiting writer
    # sleeps while the holder takes the lock again, so runs are longer there; on a loaded machine the
    # three could even run one after another. The barrier rules that out: the two writers whose first
    # entries are not the last before it have entries on both sides of another's, so at least five runs.)
    if db_url.startswith("postgresql"):
        assert all(runs[f"gw{n}"] >= 3 for n in range(3)), runs
    else:
        assert sum(runs.values()) >= 5, runs


class _Reader(threading.Thread):
    """Collects a child's stdout lines as they come."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, []

    def run(self):
        for line in self.stream:
            self.lines.append(line.split())

    def count(self, word):
        return sum(1 for line in self.lines if line and line[0] == word)


def _streams_in_flight(reader: _Reader) -> bool:
    lines = list(reader.lines)
    opened = {line[1] for line in lines if len(line) == 2 and line[0] == "OPEN"}
    finished = {line[1] for line in lines if len(line) == 2 and line[0] == "DONE"}
    return bool(opened - finished)


def _kill_under_load(writer, done_before_kill: int):
    go(writer)
    reader = _Reader(writer.stdout)
    reader.start()
    deadline = time.monotonic() + 60
    while reader.count("DONE") < done_before_kill or not _streams_in_flight(reader):
        assert writer.poll() is None, writer.stderr.read()
        assert time.monotonic() < deadline, "the writer made no progress"
        time.sleep(0.02)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=10)
    reader.join(timeout=10)
    seen = collections.defaultdict(set)
    for word, rid in (line for line in reader.lines if len(line) == 2):
        seen[word].add(rid)
    return seen


def test_sigkill_under_streaming_load_loses_nothing(db_url, tmp_path):
    Signer.load_or_create(tmp_path / "audit" / "checkpoint-key.pem")
    writer = spawn_writer(db_url, tmp_path, "gw", 0, 16)
    seen = _kill_under_load(writer, 150)
    records = _records(db_url)
    assert seen["DONE"] <= {rid for rid, r in records.items() if r["complete"]}  # every [DONE] sent has a complete record
    assert seen["OPEN"] <= set(records)  # every stream that started has a record
    incomplete = {rid for rid, r in records.items() if not r["complete"]}
    assert incomplete, "expected streams cut off mid-way"
    assert all(records[rid]["status"] == "incomplete" for rid in incomplete)
    engine = create_audit_engine(db_url)
    try:
        assert verify_chain(engine, _trusted(tmp_path)).ok
    finally:
        engine.dispose()


def test_sigkill_while_spooling_loses_nothing(pg_module_url, tmp_path):
    from test_audit_support import reset_log

    engine = create_audit_engine(pg_module_url)
    reset_log(engine)
    signer = Signer.load_or_create(tmp_path / "audit" / "checkpoint-key.pem")
    spool_dir = tmp_path / "spool"
    set_database_available(pg_module_url, False)
    try:
        writer = spawn_writer(pg_module_url, tmp_path, "gw", 0, 8, spool_dir)
        seen = _kill_under_load(writer, 60)
    finally:
        set_database_available(pg_module_url, True)
    assert list(spool_dir.glob("spool-*.jsonl"))  # the dead writer's spool is there

    async def drain(log):
        import asyncio

        deadline = time.monotonic() + 20
        while list(spool_dir.glob("spool-*.jsonl")) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    run_with_log(make_log(engine, signer, spool=Spool(spool_dir), drain_interval_s=0.1), drain)
    records = _records(pg_module_url)
    assert seen["DONE"] <= {rid for rid, r in records.items() if r["complete"]}
    assert seen["OPEN"] <= set(records)
    assert verify_chain(engine, TrustedKeys.from_keys([signer.public_key])).ok
    engine.dispose()
