"""Shared fixtures of the audit tests (imported by the test_audit_* modules; holds no tests itself).

PostgreSQL tests run in a scratch database created per module on the server at
$WARD_TEST_POSTGRES_URL (default: postgresql://postgres@127.0.0.1:5432/test) and dropped afterwards;
they fail, never skip, when the server is unreachable.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, delete, update

from ward.benchmarks.audit import scratch_postgres_database
from gateway.audit.canonical import GENESIS_HASH
from gateway.audit.chain import CHECKPOINTS, ENTRIES, HEAD, ChainStore, CheckpointPolicy
from gateway.audit.records import Actor, RequestEnd, RequestStart, RequestStatus
from gateway.audit.service import create_audit_engine
from gateway.audit.signing import Signer, TrustedKeys
from gateway.db.engine import upgrade_to_head
from gateway.db.models_identity import ApiKey, Team

PG_SERVER_URL = os.environ.get("WARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]

ALICE = Actor(subject="key-alice", team="cardiology", auth_method="api_key", key_id="key-alice", roles=("user",))
BOB = Actor(subject="bob@hospital.example", team="radiology", auth_method="oidc", roles=("user",))


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """One scratch PostgreSQL database for the whole module, migrated."""
    with scratch_postgres_database(PG_SERVER_URL, "ward_audit_test") as url:
        upgrade_to_head(url)
        yield url


def reset_log(engine: Engine) -> None:
    """Empties the log and the identity tables (a fresh chain for the next test)."""
    with engine.begin() as conn:
        conn.execute(delete(ENTRIES))
        conn.execute(delete(CHECKPOINTS))
        conn.execute(
            update(HEAD).values(
                last_seq=0, last_hash=GENESIS_HASH, last_time=None, last_checkpoint_seq=0, last_checkpoint_at=None, key_id=None, signature=None
            )
        )
        conn.execute(delete(ApiKey.__table__))
        conn.execute(delete(Team.__table__))


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path: pathlib.Path) -> str:
    """A migrated, empty audit database: SQLite in tmp_path, or the module's PostgreSQL scratch database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ward.db'}"
        upgrade_to_head(url)
        return url
    url = request.getfixturevalue("pg_module_url")
    engine = create_audit_engine(url)
    reset_log(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_audit_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def signer(tmp_path: pathlib.Path) -> Signer:
    return Signer.load_or_create(tmp_path / "audit" / "checkpoint-key.pem")


@pytest.fixture
def trusted(signer: Signer) -> TrustedKeys:
    return TrustedKeys.from_keys([signer.public_key])


def make_store(engine: Engine, signer: Signer, every_records: int = 1000, every_s: float = 3600.0) -> ChainStore:
    return ChainStore(engine, signer, CheckpointPolicy(every_records=every_records, every_s=every_s))


def request_start(i: int, actor: Actor = ALICE, **overrides) -> RequestStart:
    fields = dict(
        request_id=f"req-{i}",
        endpoint="/v1/chat/completions",
        received_at=datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc) + timedelta(seconds=i),
        principal=actor,
        client_address="10.0.0.7",
        model="llama-8b",
        worker="worker-a:50051",
        params={"temperature": 0.5, "max_tokens": 64, "stop": ["\n\n"]},
        prompt=[{"role": "user", "content": f"Question {i}: patient jane@example.org, MRN 12345678, seen 2024-05-01?"}],
    )
    fields.update(overrides)
    return RequestStart(**fields)


def request_end(i: int, **overrides) -> RequestEnd:
    fields = dict(
        status=RequestStatus.OK,
        http_status=200,
        finished_at=datetime(2025, 3, 1, 12, 0, 1, tzinfo=timezone.utc) + timedelta(seconds=i),
        first_token_at=datetime(2025, 3, 1, 12, 0, 0, 500000, tzinfo=timezone.utc) + timedelta(seconds=i),
        response=f"Answer {i}: call 555-123-4567.",
        finish_reason="stop",
        prompt_tokens=20 + i,
        completion_tokens=10 + i,
    )
    fields.update(overrides)
    return RequestEnd(**fields)


def make_log(engine: Engine, signer: Signer, *, levels=None, spool=None, every_records: int = 1000, every_s: float = 3600.0, **kwargs):
    """An AuditLog over engine (not started)."""
    from gateway.audit.capture import CaptureLevel
    from gateway.audit.log import AuditLog
    from gateway.audit.team_levels import FixedCaptureLevels

    store = make_store(engine, signer, every_records=every_records, every_s=every_s)
    return AuditLog(store, capture_levels=levels or FixedCaptureLevels(CaptureLevel.FULL), spool=spool, **kwargs)


def run_with_log(log, body):
    """Starts log, awaits body(log), closes log; returns body's result."""
    import asyncio

    async def main():
        await log.start()
        try:
            return await body(log)
        finally:
            await log.close()

    return asyncio.run(main())


def set_database_available(database_url: str, available: bool) -> None:
    """Simulates a database outage on our own scratch database (never the shared server):
    refuses new connections and ends the open ones; or lets connections in again."""
    from sqlalchemy import create_engine, make_url

    name = make_url(database_url).database
    admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if available else "false"}')
            if not available:
                conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %(name)s AND pid <> pg_backend_pid()",
                    {"name": name},
                )
    finally:
        admin.dispose()


# A gateway-like writer process: `python -c WRITER_SCRIPT URL DATA_DIR NAME COUNT CONCURRENCY SPOOL_DIR
# BARRIER`. It prints READY once started, then waits for a line on stdin (see go()). With BARRIER 1 it
# then makes one request alone, prints FIRST and waits for another line (see go_past_first()), so that
# every writer's first entries are in the chain before any writer goes on. COUNT 0 runs until killed. Prints "OPEN id" once a stream's open is durable and "DONE id" once its
# completion is (the moments a gateway may send the first and the last byte); every third request is
# a whole one-shot request instead ("DONE id" only).
WRITER_SCRIPT = r"""
import asyncio, itertools, random, sys
from datetime import datetime, timezone
from gateway.audit.records import Actor, RequestEnd, RequestStart
from gateway.audit.service import build_audit_services
from gateway.audit.settings import AuditSettings

url, data_dir, name, count, concurrency, spool_dir, barrier = sys.argv[1:8]
count, concurrency = int(count), int(concurrency)
actor = Actor(subject=f"key-{name}", team="cardiology", auth_method="api_key", key_id=f"key-{name}")

def start(rid):
    return RequestStart(request_id=rid, endpoint="/v1/chat/completions", principal=actor, model="m",
                        params={"stream": True}, prompt=[{"role": "user", "content": f"hello {rid}"}])

def end():
    return RequestEnd(status="ok", http_status=200, response="fine thanks", finish_reason="stop",
                      prompt_tokens=3, completion_tokens=2, finished_at=datetime.now(timezone.utc))

async def main():
    settings = AuditSettings(database_url=url, checkpoint_every_records=40,
                             on_database_outage="spool" if spool_dir != "-" else "fail_closed",
                             spool_dir=None if spool_dir == "-" else spool_dir, spool_drain_interval_s=0.2)
    log = build_audit_services(settings, data_dir, migrate=False).log
    await log.start()
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # start together: wait for the parent's "go"
    numbers = itertools.count() if count == 0 else iter(range(count))

    async def request(i):
        rid = f"{name}-{i}"
        if i % 3 == 2:
            await log.record_request(start(rid), end())
        else:
            handle = await log.open(start(rid))
            print("OPEN", rid, flush=True)
            await asyncio.sleep(random.random() * 0.01)
            await log.complete(handle, end())
        print("DONE", rid, flush=True)

    async def client():
        for i in numbers:
            await request(i)

    if barrier == "1":
        await request(next(numbers))
        print("FIRST", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    await asyncio.gather(*(client() for _ in range(concurrency)))
    await log.close()

asyncio.run(main())
"""


def spawn_writer(url: str, data_dir, name: str, count: int, concurrency: int, spool_dir=None, barrier: bool = False):
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, url, str(data_dir), name, str(count), str(concurrency), str(spool_dir or "-"),
         "1" if barrier else "0"],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def go(*writers) -> None:
    """Waits until every spawned writer is ready, then lets them all start at once."""
    for writer in writers:
        line = writer.stdout.readline()
        assert line.strip() == "READY", f"writer failed to start: {line!r} {writer.stderr.read() if not line else ''}"
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()


def go_past_first(*writers) -> list[list[str]]:
    """For writers spawned with ``barrier=True`` and started with go(): waits until each has made its
    first request durable (FIRST), then lets them all go on. Returns the lines each printed meanwhile."""
    early = []
    for writer in writers:
        lines = []
        for line in writer.stdout:
            if line.strip() == "FIRST":
                break
            lines.append(line)
        else:
            raise AssertionError(f"writer stopped before its first request: {writer.stderr.read()}")
        early.append(lines)
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    return early
