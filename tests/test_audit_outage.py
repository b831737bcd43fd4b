"""Database outages: fail closed (nothing acknowledged that is not durable), or spool to a local
fsync'd file and drain it when the database returns, without loss or duplicates."""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from sqlalchemy import func, select

from gateway.audit.capture import CaptureLevel, Redactor
from gateway.audit.chain import ENTRIES
from gateway.audit.errors import AuditUnavailable
from gateway.audit.records import request_draft
from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
from gateway.audit.service import create_audit_engine
from gateway.audit.spool import Spool
from gateway.audit.verify import verify_chain
from ports import free_port
from test_audit_support import (  # noqa: F401
    make_log,
    make_store,
    pg_module_url,
    request_end,
    request_start,
    run_with_log,
    set_database_available,
    signer,
    trusted,
)

ALL = ReadScope(teams=None, content=True, kinds=None)


@pytest.fixture
def pg_engine(pg_module_url):
    from test_audit_support import reset_log

    engine = create_audit_engine(pg_module_url, connect_timeout_s=2)
    reset_log(engine)
    yield engine
    set_database_available(pg_module_url, True)
    engine.dispose()


def _count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(ENTRIES)).scalar_one()


async def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_postgres_down_fails_closed_and_recovers(pg_engine, pg_module_url, signer, trusted):
    async def body(log):
        await log.record_request(request_start(1), request_end(1))
        set_database_available(pg_module_url, False)
        with pytest.raises(AuditUnavailable):
            await log.record_request(request_start(2), request_end(2))
        with pytest.raises(AuditUnavailable):
            await log.open(request_start(3))
        assert log.available is False
        set_database_available(pg_module_url, True)
        await log.record_request(request_start(4), request_end(4))
        assert log.available is True

    run_with_log(make_log(pg_engine, signer), body)
    with pg_engine.connect() as conn:
        assert list(conn.execute(select(ENTRIES.c.request_id).order_by(ENTRIES.c.seq)).scalars()) == ["req-1", "req-4"]
    assert verify_chain(pg_engine, trusted).ok


def test_sqlite_locked_past_the_write_timeout_fails_closed(tmp_path, signer):
    from gateway.audit.chain import ChainStore, CheckpointPolicy
    from gateway.audit.log import AuditLog
    from gateway.audit.team_levels import FixedCaptureLevels
    from gateway.db.engine import upgrade_to_head

    url = f"sqlite:///{tmp_path / 'ward.db'}"
    upgrade_to_head(url)
    engine = create_audit_engine(url)
    store = ChainStore(engine, signer, CheckpointPolicy(), write_timeout_s=0.3)
    log = AuditLog(store, capture_levels=FixedCaptureLevels())
    blocker = create_audit_engine(url).connect()

    async def body(log):
        blocker.exec_driver_sql("BEGIN EXCLUSIVE")  # another process holds the database
        started = time.monotonic()
        with pytest.raises(AuditUnavailable):
            await log.record_request(request_start(1), request_end(1))
        assert time.monotonic() - started < 5
        blocker.rollback()
        await log.record_request(request_start(2), request_end(2))

    try:
        run_with_log(log, body)
    finally:
        blocker.close()
    assert _count(engine) == 1
    engine.dispose()


def test_spool_keeps_requests_served_and_drains_in_order(pg_engine, pg_module_url, signer, trusted, tmp_path):
    spool_dir = tmp_path / "spool"

    async def body(log):
        await log.record_request(request_start(1), request_end(1))
        set_database_available(pg_module_url, False)
        refs = [await log.record_request(request_start(i), request_end(i)) for i in (2, 3)]
        handle = await log.open(request_start(4))  # a stream opened during the outage...
        assert all(r.spooled and r.seq is None for r in refs)
        assert sum(len(p.read_text().splitlines()) for p in spool_dir.glob("spool-*.jsonl")) == 3
        set_database_available(pg_module_url, True)
        await log.complete(handle, request_end(4))  # ...completes after it: still after its open
        await _wait_for(lambda: _count(pg_engine) == 5)

    log = make_log(pg_engine, signer, spool=Spool(spool_dir), drain_interval_s=0.1)
    run_with_log(log, body)
    with pg_engine.connect() as conn:
        order = list(conn.execute(select(ENTRIES.c.request_id, ENTRIES.c.kind).order_by(ENTRIES.c.seq)).all())
    assert [tuple(r) for r in order] == [
        ("req-1", "request"), ("req-2", "request"), ("req-3", "request"), ("req-4", "request_open"), ("req-4", "request_complete"),
    ]
    assert verify_chain(pg_engine, trusted).ok
    records = list(AuditReader(pg_engine).iter_records(RecordFilter(), ALL, through_seq=10**9))
    assert [r["id"] for r in records] == ["req-1", "req-2", "req-3", "req-4"] and records[-1]["complete"]
    assert list(spool_dir.glob("spool-*.jsonl")) == []  # closed writer's empty file is removed
    # Three entries were spooled during the outage; the completion too if it came within one drain
    # interval of the last failed try (the database is retried once per interval, not per request).
    assert log.stats.spooled in (3, 4) and log.stats.drained == log.stats.spooled


def test_redraining_after_a_crash_mid_drain_adds_no_duplicates(pg_engine, signer, trusted, tmp_path):
    spool_dir = tmp_path / "spool"
    drafts = [request_draft(request_start(i), request_end(i), CaptureLevel.FULL, Redactor()) for i in range(10)]
    dead = Spool(spool_dir)
    dead.append(drafts)
    os.close(dead._fd)  # the writer died: the kernel drops its lock, its file stays
    dead._fd, dead._size = None, 0
    # Its drain had committed the first four before the crash.
    make_store(pg_engine, signer).append(drafts[:4])
    # A torn last line from a write that was never acknowledged.
    (spool_file,) = spool_dir.glob("spool-*.jsonl")
    with spool_file.open("a") as handle:
        handle.write('{"entry": {"entry_id": "torn')

    log = make_log(pg_engine, signer, spool=Spool(spool_dir), drain_interval_s=0.1)
    run_with_log(log, lambda log: _wait_for(lambda: _count(pg_engine) == 10))
    time.sleep(0.2)
    with pg_engine.connect() as conn:
        ids = list(conn.execute(select(ENTRIES.c.request_id).order_by(ENTRIES.c.seq)).scalars())
    assert ids == [f"req-{i}" for i in range(10)]
    assert list(spool_dir.glob("spool-*.jsonl")) == []
    assert verify_chain(pg_engine, trusted).ok


def test_a_live_writers_spool_is_left_alone(tmp_path, pg_engine, signer):
    spool_dir = tmp_path / "spool"
    live = Spool(spool_dir)
    live.append([request_draft(request_start(1), request_end(1), CaptureLevel.FULL, Redactor())])
    other = Spool(spool_dir)
    assert other.has_pending()  # it sees the file...
    assert other.drain(make_store(pg_engine, signer)) == 0  # ...but cannot take its lock
    assert _count(pg_engine) == 0
    assert live.drain(make_store(pg_engine, signer)) == 1
    live.close()
    assert list(spool_dir.glob("spool-*.jsonl")) == []


def test_spool_lines_carry_checksums(tmp_path):
    spool = Spool(tmp_path)
    spool.append([request_draft(request_start(1), request_end(1), CaptureLevel.FULL, Redactor())])
    (path,) = tmp_path.glob("spool-*.jsonl")
    line = json.loads(path.read_text())
    assert set(line) == {"entry", "sha256"} and line["entry"]["request_id"] == "req-1"
    spool.close()


# --- a database that really stops: a private PostgreSQL cluster of our own --------------------

class PrivateCluster:
    """A throwaway PostgreSQL cluster on a free port (never the shared server), stopped and started at will."""

    def __init__(self):
        import glob
        import shutil
        import tempfile

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or ([shutil.which("pg_ctl")] if shutil.which("pg_ctl") else [])
        assert found, "PostgreSQL server binaries (pg_ctl, initdb) are needed for the database-stop tests"
        self.bin = os.path.dirname(found[-1])
        self.base = tempfile.mkdtemp(prefix="ward-audit-pg-", dir="/tmp")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        import subprocess

        command = [os.path.join(self.bin, args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        import shutil

        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self._run("initdb", "-D", f"{self.base}/data", "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", f"{self.base}/data", "-o", options, "-l", f"{self.base}/log", "-w", "start")

    def stop(self) -> None:
        """An immediate stop: connections cut, no clean shutdown (like a crash)."""
        self._run("pg_ctl", "-D", f"{self.base}/data", "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        import shutil

        try:
            self.stop()
        except Exception:  # already stopped
            pass
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    from gateway.db.engine import upgrade_to_head

    private = PrivateCluster()
    try:
        private.init()
        upgrade_to_head(private.url)
        yield private
    finally:
        private.destroy()


@pytest.fixture
def cluster_engine(cluster):
    from test_audit_support import reset_log

    if not _accepts(cluster.url):  # a previous test left it stopped
        cluster.start()
    engine = create_audit_engine(cluster.url, connect_timeout_s=2)
    reset_log(engine)
    yield engine
    engine.dispose()


def _accepts(url: str) -> bool:
    try:
        engine = create_audit_engine(url, connect_timeout_s=1)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


def test_stopped_database_fails_closed_then_recovers(cluster, cluster_engine, signer, trusted):
    async def body(log):
        await log.record_request(request_start(1), request_end(1))
        cluster.stop()
        started = time.monotonic()
        with pytest.raises(AuditUnavailable):
            await log.record_request(request_start(2), request_end(2))
        with pytest.raises(AuditUnavailable):
            await log.open(request_start(3))
        assert time.monotonic() - started < 10
        cluster.start()
        await log.record_request(request_start(4), request_end(4))

    run_with_log(make_log(cluster_engine, signer), body)
    with cluster_engine.connect() as conn:
        assert list(conn.execute(select(ENTRIES.c.request_id).order_by(ENTRIES.c.seq)).scalars()) == ["req-1", "req-4"]
    assert verify_chain(cluster_engine, trusted).ok


def test_stopped_database_with_spool_loses_nothing(cluster, cluster_engine, signer, trusted, tmp_path):
    async def body(log):
        await log.record_request(request_start(0), request_end(0))
        cluster.stop()
        refs = await asyncio.gather(*(log.record_request(request_start(i), request_end(i)) for i in range(1, 30)))
        assert all(r.spooled for r in refs)
        cluster.start()
        await _wait_for(lambda: _count(cluster_engine) == 30)

    run_with_log(make_log(cluster_engine, signer, spool=Spool(tmp_path / "spool"), drain_interval_s=0.1), body)
    with cluster_engine.connect() as conn:
        ids = list(conn.execute(select(ENTRIES.c.request_id).order_by(ENTRIES.c.seq)).scalars())
    assert ids[0] == "req-0" and sorted(ids) == sorted(f"req-{i}" for i in range(30))
    assert verify_chain(cluster_engine, trusted).ok
