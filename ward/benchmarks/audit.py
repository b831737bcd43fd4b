"""Benchmark of the audit write on the request path: added latency (p50, p99) and sustained records/s.

For each database (SQLite in a temporary directory; PostgreSQL in a scratch database created on the
given server and dropped afterwards) it measures, through the real AuditLog (group commit, capture,
signing, durable commit):

- ``1 client``: one request at a time, the time ``record_request`` adds before a response may go out;
- ``stream``: one stream at a time, ``open`` (before the first byte) plus ``complete`` (before [DONE]);
- ``N clients``: N concurrent requests; per-call latency and records per second sustained;
then verifies the chain it wrote. Each record carries a ~1 KB prompt and a ~1 KB answer.
"""
from __future__ import annotations

import asyncio
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import create_engine, make_url

from gateway.audit.records import RequestEnd, RequestStart, RequestStatus
from gateway.audit.settings import AuditSettings

PROMPT = [
    {"role": "system", "content": "You are a careful clinical documentation assistant. " * 4},
    {"role": "user", "content": "Summarise the discharge note for the ward round, flag any medication changes. " * 8},
]
ANSWER = "Discharge summary: stable, afebrile, mobilising independently; continue current medication. " * 10


@contextmanager
def scratch_postgres_database(server_url: str, prefix: str = "ward_audit_scratch") -> Iterator[str]:
    """A fresh, empty database on the server at server_url, dropped (forcibly) on exit; yields its URL."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _start(i: int) -> RequestStart:
    from gateway.audit.records import Actor

    return RequestStart(
        request_id=f"bench-{i}-{secrets.token_hex(4)}",
        endpoint="/v1/chat/completions",
        principal=Actor(subject="bench-key", team="bench", auth_method="api_key", key_id="bench-key"),
        client_address="127.0.0.1",
        model="bench-model",
        worker="127.0.0.1:50051",
        params={"temperature": 0.7, "max_tokens": 256, "stream": False},
        prompt=PROMPT,
    )


def _end() -> RequestEnd:
    now = datetime.now(timezone.utc)
    return RequestEnd(
        status=RequestStatus.OK,
        http_status=200,
        first_token_at=now,
        finished_at=now,
        response=ANSWER,
        finish_reason="stop",
        prompt_tokens=180,
        completion_tokens=140,
    )


async def _measure(url: str, data_dir: str, records: int, concurrency: int) -> dict[str, Any]:
    from gateway.audit.service import build_audit_services, resolve_paths, trusted_keys
    from gateway.audit.verify import verify_chain

    settings = AuditSettings(database_url=url)
    services = build_audit_services(settings, data_dir)
    log = services.log
    await log.start()
    try:
        for i in range(20):  # warm-up: connections, caches
            await log.record_request(_start(i), _end())
        single = []
        for i in range(min(records, 500)):
            start = _start(i)
            t0 = time.perf_counter()
            await log.record_request(start, _end())
            single.append(time.perf_counter() - t0)
        stream = []
        for i in range(min(records, 200)):
            t0 = time.perf_counter()
            handle = await log.open(_start(i))
            await log.complete(handle, _end())
            stream.append(time.perf_counter() - t0)

        loaded: list[float] = []
        counter = iter(range(records))
        batches_before = log.stats.batches

        async def client() -> None:
            for i in counter:
                start = _start(i)
                t0 = time.perf_counter()
                await log.record_request(start, _end())
                loaded.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        batches = log.stats.batches - batches_before
    finally:
        await log.close()
    paths = resolve_paths(settings, data_dir)
    engine = services.engine
    t1 = time.perf_counter()
    report = verify_chain(engine, trusted_keys(settings, paths))
    verify_s = time.perf_counter() - t1
    engine.dispose()
    ms = 1000.0
    return {
        "single_p50_ms": statistics.median(single) * ms,
        "single_p99_ms": _percentile(single, 0.99) * ms,
        "stream_p50_ms": statistics.median(stream) * ms,
        "stream_p99_ms": _percentile(stream, 0.99) * ms,
        "loaded_p50_ms": statistics.median(loaded) * ms,
        "loaded_p99_ms": _percentile(loaded, 0.99) * ms,
        "records_per_s": records / elapsed,
        "mean_batch": records / max(1, batches),
        "concurrency": concurrency,
        "records": records,
        "verify_ok": report.ok,
        "verify_records_per_s": report.entries / verify_s if verify_s > 0 else None,
        "total_entries": report.entries,
    }


def run_benchmark(postgres: str | None, records: int, concurrency: int) -> dict[str, dict[str, Any]]:
    """Results per database ("sqlite", and "postgresql" when a server URL is given)."""
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ward-audit-bench-") as data_dir:
        results["sqlite"] = asyncio.run(_measure(f"sqlite:///{data_dir}/ward.db", data_dir, records, concurrency))
        if postgres:
            with scratch_postgres_database(postgres, "ward_audit_bench") as url:
                results["postgresql"] = asyncio.run(_measure(url, data_dir, records, concurrency))
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        ("database", "1 client p50/p99 ms", "stream open+complete p50/p99 ms", "loaded p50/p99 ms", "records/s", "mean batch", "verify"),
    ]
    for name, r in results.items():
        rows.append(
            (
                name,
                f"{r['single_p50_ms']:.2f} / {r['single_p99_ms']:.2f}",
                f"{r['stream_p50_ms']:.2f} / {r['stream_p99_ms']:.2f}",
                f"{r['loaded_p50_ms']:.2f} / {r['loaded_p99_ms']:.2f} (x{r['concurrency']})",
                f"{r['records_per_s']:.0f}",
                f"{r['mean_batch']:.1f}",
                "ok" if r["verify_ok"] else "FAILED",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)

