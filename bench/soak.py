"""Soak: 1,000 concurrent streams through a governed gateway, for a bounded time.

    python bench/soak.py [--streams 1000] [--tokens 60] [--token-interval 1.0] [--ramp 10] [--waves 2]
                         [--json bench/results/soak.json]

Starts the instant worker streaming slowly (``--token-delay``) and one ``ward gateway`` process as
``ward up`` runs it: a database API key, quotas in-process with limits far above the load (every
stream reserves and settles), the audit log on SQLite (one open and one completion entry per
stream). Each wave opens ``--streams`` streamed chat completions over ``--ramp`` seconds; each
receives ``--tokens`` tokens, one every ``--token-interval`` seconds, so all of them are open at
once for most of the wave. The client is this process (raw asyncio sockets, one connection per
stream), so client, gateway and worker share the machine.

Measured: errors (a status other than 200, an error event, a body cut before ``[DONE]``, a wrong
token count), the peak number of streams open at once, the gateway's RSS once a second and its CPU
time. Then the gateway gets SIGTERM (it drains and must exit 0) and the audit log is read: it must
hold exactly one complete ``ok`` record per stream, with the stream's token count.

Exit status 0 when every check passes: no errors, every stream open at once, memory flat (the
RSS at the end of each wave's full-concurrency hold within ``--rss-tolerance`` of the first wave's,
and drifting no more than that within a hold), every stream audited once.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "soak-model"
TEAM = "soak"
HIGH = 10**12  # quota limits far above the load: every stream is checked and settled, none refused
TOKEN_MARK = b'"content":"ok "'  # one per token event of the instant worker's text


@dataclass
class StreamResult:
    request_id: str | None = None
    status: int = 0
    tokens: int = 0
    done: bool = False
    error: str | None = None


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    open_streams: int


@dataclass
class Wave:
    index: int
    seconds: float = 0.0
    peak_open: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    rss_hold_first_mb: float = 0.0  # first sample with every stream open
    rss_hold_last_mb: float = 0.0  # last sample with every stream open
    rss_peak_mb: float = 0.0
    rss_after_mb: float = 0.0  # once the wave's streams have ended


# ---- processes ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}
    return {**env, "PYTHONPATH": str(ROOT)}


def _rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_worker(workdir: pathlib.Path, token_interval_s: float) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "ward.benchmarks.gateway.instant_worker", "--model", MODEL,
            "--token-delay", str(token_interval_s)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(workdir / "worker.log", "w"), text=True,
                               env=_env())
    line = process.stdout.readline().split()
    if not line or line[0] != "PORT":
        raise RuntimeError("the instant worker did not start")
    return process, f"127.0.0.1:{line[1]}"


def database_key(database_url: str) -> str:
    from gateway.auth.principal import Role
    from gateway.auth.stores import KeyStore, TeamStore
    from gateway.db import create_db_engine, upgrade_to_head

    upgrade_to_head(database_url)
    engine = create_db_engine(database_url)
    try:
        TeamStore(engine).ensure(TEAM)
        return KeyStore(engine).create(TEAM, Role.USER, description="soak")[1]
    finally:
        engine.dispose()


def start_gateway(workdir: pathlib.Path, worker: str) -> tuple[subprocess.Popen, int, str]:
    import httpx

    data_dir = workdir / "gateway"
    data_dir.mkdir()
    port = _free_port()
    (data_dir / "quotas.yaml").write_text(yaml.safe_dump({"defaults": {"requests_per_minute": HIGH, "tokens_per_minute": HIGH}}))
    config = {"port": port, "models": {MODEL: {"workers": [worker]}},
              "quota": {"config_file": str(data_dir / "quotas.yaml")}, "shutdown": {"grace_s": 30}}
    (data_dir / "gateway.yaml").write_text(yaml.safe_dump(config))
    api_key = database_key(f"sqlite:///{data_dir / 'ward.db'}")
    argv = [sys.executable, "-m", "ward", "gateway", "--config", str(data_dir / "gateway.yaml"),
            "--data-dir", str(data_dir), "--log-level", "warning"]
    process = subprocess.Popen(argv, stdout=open(data_dir / "gateway.log", "w"), stderr=subprocess.STDOUT, env=_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{(data_dir / 'gateway.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process, port, api_key
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the gateway was not ready in 60 s")


# ---- the client -----------------------------------------------------------------------------------
def build_request(port: int, api_key: str, tokens: int) -> bytes:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Summarise the handover note."}],
                       "max_tokens": tokens, "stream": True}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


class OpenStreams:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def opened(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def closed(self) -> None:
        self.now -= 1


async def one_stream(port: int, request: bytes, open_streams: OpenStreams, timeout_s: float) -> StreamResult:
    result = StreamResult()
    writer = None
    counted = False
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            result.status = int(head[9:12])
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"x-request-id:"):
                    result.request_id = line.split(b":", 1)[1].strip().decode()
            if result.status != 200:
                result.error = f"status {result.status}"
                return result
            open_streams.opened()
            counted = True
            while True:  # the chunked body: size line, data, CRLF; a zero size ends it
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                result.tokens += data.count(TOKEN_MARK)
                if b'"error"' in data:
                    result.error = "error event"
                if b"data: [DONE]" in data:
                    result.done = True
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
        result.error = f"{type(exc).__name__}"
    finally:
        if counted:
            open_streams.closed()
        if writer is not None:
            writer.close()
    if result.error is None and not result.done:
        result.error = "no [DONE]"
    return result


async def run_wave(index: int, port: int, request: bytes, streams: int, tokens: int, ramp_s: float,
                   timeout_s: float, gateway_pid: int, samples: list[Sample], t0: float) -> tuple[Wave, list[StreamResult]]:
    wave = Wave(index)
    open_streams = OpenStreams()
    started = time.monotonic()
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            samples.append(Sample(round(time.monotonic() - t0, 1), round(_rss_mb(gateway_pid), 1), open_streams.now))
            try:
                await asyncio.wait_for(stop_sampling.wait(), 1.0)
            except TimeoutError:
                pass

    async def launch(i: int) -> StreamResult:
        await asyncio.sleep(ramp_s * i / streams)
        return await one_stream(port, request, open_streams, timeout_s)

    first_sample = len(samples)
    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(launch(i) for i in range(streams)))
    await asyncio.sleep(2.0)  # the last completions settle (quota, audit) before the idle reading
    stop_sampling.set()
    await sampler
    wave.seconds = round(time.monotonic() - started, 1)
    wave.peak_open = open_streams.peak
    for r in results:
        if r.error is None and r.tokens != tokens:
            r.error = f"{r.tokens} tokens, not {tokens}"
        if r.error is not None:
            wave.errors += 1
            wave.error_kinds[r.error] = wave.error_kinds.get(r.error, 0) + 1
    mine = samples[first_sample:]
    full = [s for s in mine if s.open_streams == streams]
    if full:
        wave.rss_hold_first_mb, wave.rss_hold_last_mb = full[0].rss_mb, full[-1].rss_mb
    wave.rss_peak_mb = max(s.rss_mb for s in mine)
    wave.rss_after_mb = round(_rss_mb(gateway_pid), 1)
    return wave, results


# ---- the audit log --------------------------------------------------------------------------------
def audit_check(database_url: str, results: list[StreamResult], tokens: int) -> dict[str, Any]:
    from gateway.audit.reader import AuditReader, ReadScope, RecordFilter
    from gateway.audit.service import create_audit_engine

    engine = create_audit_engine(database_url)
    try:
        scope = ReadScope(teams=None, content=False, kinds=None)
        records = list(AuditReader(engine).iter_records(RecordFilter(kind="request"), scope, through_seq=10**12))
    finally:
        engine.dispose()
    by_id: dict[str, list[dict]] = {}
    for record in records:
        by_id.setdefault(record["id"], []).append(record)
    expected = {r.request_id for r in results}
    audited_once = sum(1 for rid in expected if rid and len(by_id.get(rid, [])) == 1)
    complete_ok = sum(
        1 for rid in expected if rid and len(by_id.get(rid, [])) == 1
        and (rec := by_id[rid][0])["complete"] and rec["status"] == "ok" and rec["http_status"] == 200
        and rec["completion_tokens"] == tokens
    )
    return {"records": len(records), "streams": len(results), "audited_once": audited_once,
            "complete_ok_with_tokens": complete_ok, "unexpected_records": len(set(by_id) - expected)}


# ---- the run --------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=60, help="tokens per stream")
    parser.add_argument("--token-interval", type=float, default=1.0, help="seconds between a stream's tokens")
    parser.add_argument("--ramp", type=float, default=10.0, help="seconds over which a wave's streams open")
    parser.add_argument("--waves", type=int, default=2)
    parser.add_argument("--rss-tolerance", type=float, default=0.10, help="allowed RSS change, as a fraction")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here")
    args = parser.parse_args()

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ward-soak-"))
    worker, address = start_worker(workdir, args.token_interval)
    gateway = None
    try:
        gateway, port, api_key = start_gateway(workdir, address)
        request = build_request(port, api_key, args.tokens)
        timeout_s = args.ramp + args.tokens * args.token_interval * 3 + 60
        samples: list[Sample] = []
        t0 = time.monotonic()
        rss_idle = round(_rss_mb(gateway.pid), 1)
        cpu_before = _cpu_s(gateway.pid)
        waves, results = [], []
        for index in range(args.waves):
            wave, wave_results = asyncio.run(run_wave(
                index, port, request, args.streams, args.tokens, args.ramp, timeout_s, gateway.pid, samples, t0))
            waves.append(wave)
            results += wave_results
            print(f"wave {index}: {wave.seconds:.0f} s, peak {wave.peak_open} open, {wave.errors} errors, "
                  f"RSS {wave.rss_hold_first_mb:.0f} -> {wave.rss_hold_last_mb:.0f} MB at full concurrency, "
                  f"peak {wave.rss_peak_mb:.0f}, after {wave.rss_after_mb:.0f} MB", flush=True)
        cpu_s = _cpu_s(gateway.pid) - cpu_before
        gateway.send_signal(signal.SIGTERM)
        exit_code = gateway.wait(60)
        gateway = None
        audit = audit_check(f"sqlite:///{workdir / 'gateway' / 'ward.db'}", results, args.tokens)
    finally:
        if gateway is not None:
            gateway.kill()
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)

    tolerance = args.rss_tolerance
    first = waves[0]
    checks = {
        "no_errors": all(w.errors == 0 for w in waves),
        "all_streams_open_at_once": all(w.peak_open == args.streams for w in waves),
        "memory_flat_within_holds": all(
            w.rss_hold_first_mb and w.rss_hold_last_mb <= w.rss_hold_first_mb * (1 + tolerance) for w in waves),
        "memory_flat_across_waves": all(
            w.rss_hold_last_mb <= first.rss_hold_last_mb * (1 + tolerance) for w in waves),
        "every_stream_audited_once": audit["audited_once"] == len(results) == audit["complete_ok_with_tokens"]
        and audit["unexpected_records"] == 0,
        "gateway_exit_0_on_sigterm": exit_code == 0,
    }
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "command": "python bench/soak.py " + " ".join(sys.argv[1:]),
        "streams_per_wave": args.streams, "tokens_per_stream": args.tokens, "token_interval_s": args.token_interval,
        "ramp_s": args.ramp, "waves": [asdict(w) for w in waves], "rss_idle_before_mb": rss_idle,
        "gateway_cpu_s": round(cpu_s, 1),
        "gateway_cpu_us_per_token_event": round(cpu_s / max(1, len(results) * args.tokens) * 1e6, 1),
        "audit": audit, "gateway_exit_code": exit_code, "checks": checks,
        "rss_samples": [asdict(s) for s in samples],
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rss_samples"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
