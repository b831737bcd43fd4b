"""What identity, quotas and the audit log cost per request: real gateway processes, off and on.

Each configuration is a gateway process on this machine in front of one instant worker
(``instant_worker.py``), loaded by ``load.py`` from this process over loopback, so client, gateway
and worker share the CPU. Non-streamed chat completions with ``max_tokens: 1``; every answer is one
token. Measured per configuration: requests per second with 1 and with 16 clients (closed loop),
latency p50 / p99, and the gateway process's CPU time per request (all its threads, from /proc).

Configurations:

- ``off``: ``create_app`` with a static API key: no database, no quotas, no audit;
- ``on``: ``ward gateway`` as ``ward up`` runs it: a database API key, quotas in-process
  (``requests_per_minute`` and ``tokens_per_minute`` on every team, far above the load, so every
  request reserves and settles), the audit log on SQLite (one durable record per request);
- ``on, no token limit``: the same with ``requests_per_minute`` only (no token limit in play, so
  the prompt is not counted before dispatch);
- ``on, Redis + PostgreSQL``: quotas on Redis and identity and audit on PostgreSQL (a scratch
  database), with ``--redis-url`` and ``--postgres``;
- ``on, before``: ``on`` served from another checkout (``--baseline-tree``, e.g. a worktree of the
  previous commit) with that checkout's own defaults, so a change is measured A/B in one run (with
  ``--redis-url`` and ``--postgres`` also ``on, Redis + PostgreSQL, before``);
- ``litellm``: LiteLLM's proxy (``--peer litellm``, see ``peer.py``): master key, mock response.

The gateways run side by side and are measured in turns, ``rounds`` times; each figure is the median
over the rounds, so slow spells of a shared machine do not land on one configuration only.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from ward.benchmarks.gateway.load import build_request, run_load

MODEL = "bench-model"
TEAM = "bench"
STATIC_KEY = "sk-bench-static-key-0123456789"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Summarise the handover note."}], "max_tokens": 1}
HIGH = 10**12  # limits far above any load: every request is checked and recorded, none refused
BENCH_KEYS = "ward:bench"  # the quota keys of benchmark gateways live below it
# The anchor when LiteLLM is not measured in the run (docs/performance.md): LiteLLM 1.108 proxy,
# master key only, mock response, 2-core box.
LITELLM_REQ_S = {1: 73.0, 16: 100.0}
PEER = "litellm"


@dataclass
class Config:
    name: str
    quotas: dict[str, Any] | None  # None: the plain gateway (off)
    env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None
    peer: bool = False  # not Ward: LiteLLM's proxy
    cwd: str | None = None  # ``python -m ward`` imports from the working directory first
    launcher: tuple[str, ...] = ()  # a script run before ``-m MODULE`` that runs the module (a tracer)


@dataclass
class Row:
    config: str
    clients: int
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    gateway_cpu_ms_per_request: float


@dataclass
class Gateway:
    config: Config
    process: subprocess.Popen
    port: int
    api_key: str


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}
    return {**env, **extra}


def _database_key(database_url: str) -> str:
    from gateway.auth.principal import Role
    from gateway.auth.stores import KeyStore, TeamStore
    from gateway.db import create_db_engine, upgrade_to_head

    upgrade_to_head(database_url)
    engine = create_db_engine(database_url)
    try:
        TeamStore(engine).ensure(TEAM)
        return KeyStore(engine).create(TEAM, Role.USER, description="gateway benchmark")[1]
    finally:
        engine.dispose()


def _start_worker(workdir: pathlib.Path, extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """The instant worker (``extra_args``: its options, e.g. ``--first-token-delay``) and its address."""
    log = open(workdir / "instant-worker.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "ward.benchmarks.gateway.instant_worker", "--model", MODEL,
                                *extra_args], stdout=subprocess.PIPE, stderr=log, text=True, env=_clean_env({}))
    line = process.stdout.readline().split()
    if not line or line[0] != "PORT":
        raise RuntimeError("the instant worker did not start")
    return process, f"127.0.0.1:{line[1]}"


def _start_gateway(config: Config, worker: str, workdir: pathlib.Path, key_prefix: str = BENCH_KEYS) -> Gateway:
    """One gateway of ``config``; a governed one keeps its quota counters under its own key below
    ``key_prefix``."""
    data_dir = workdir / config.name.replace(" ", "-").replace(",", "").replace("+", "")
    data_dir.mkdir(parents=True)
    port = _free_port()
    if config.peer:
        from ward.benchmarks.gateway.peer import litellm_command

        argv, env, key = litellm_command(MODEL, port, data_dir)
        log = open(data_dir / "gateway.log", "w")
        env = {k: v for k, v in _clean_env(env).items() if k != "PYTHONPATH"}
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir)
        gateway = Gateway(config, process, port, key)
        _wait_ready(gateway, data_dir / "gateway.log", path="/health/liveliness", timeout_s=180.0)
        return gateway
    body: dict[str, Any] = {"port": port, "models": {MODEL: {"workers": [worker]}}}
    if config.quotas is None:
        body["api_keys"] = {STATIC_KEY: TEAM}
        argv = [sys.executable, *config.launcher, "-m", "ward.benchmarks.gateway.serve_plain"]
        api_key = STATIC_KEY
    else:
        (data_dir / "quotas.yaml").write_text(yaml.safe_dump(config.quotas))
        body["quota"] = {"config_file": str(data_dir / "quotas.yaml"), "key_prefix": f"{key_prefix}:{uuid.uuid4().hex[:8]}"}
        argv = [sys.executable, *config.launcher, "-m", "ward", "gateway", "--data-dir", str(data_dir), "--log-level", "warning"]
        api_key = _database_key(config.database_url or f"sqlite:///{data_dir / 'ward.db'}")
    config_path = data_dir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(body))
    log = open(data_dir / "gateway.log", "w")
    process = subprocess.Popen([*argv, "--config", str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                               env=_clean_env(config.env), cwd=config.cwd)
    gateway = Gateway(config, process, port, api_key)
    _wait_ready(gateway, data_dir / "gateway.log")
    return gateway


def _wait_ready(gateway: Gateway, log: pathlib.Path, timeout_s: float = 60.0, path: str = "/readyz") -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"gateway `{gateway.config.name}` exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{gateway.port}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"gateway `{gateway.config.name}` was not ready in {timeout_s:.0f} s")


def _measure(gateway: Gateway, clients: int, requests: int) -> Row:
    request = build_request("127.0.0.1", "/v1/chat/completions", gateway.api_key, BODY)
    cpu_before = _process_cpu_s(gateway.process.pid)
    result = asyncio.run(run_load("127.0.0.1", gateway.port, request, clients=clients, requests=requests))
    cpu = _process_cpu_s(gateway.process.pid) - cpu_before
    if set(result.statuses) != {200}:
        raise RuntimeError(f"`{gateway.config.name}`: answers other than 200: {result.statuses}")
    return Row(gateway.config.name, clients, result.requests, round(result.requests_per_s, 1),
               round(result.percentile_ms(50), 3), round(result.percentile_ms(99), 3),
               round(cpu / result.requests * 1000, 3))


def _median_rows(rounds: list[list[Row]]) -> list[Row]:
    merged = []
    for same in zip(*rounds):
        first = same[0]
        merged.append(Row(
            first.config, first.clients, sum(r.requests for r in same),
            round(statistics.median(r.requests_per_s for r in same), 1),
            round(statistics.median(r.p50_ms for r in same), 3),
            round(statistics.median(r.p99_ms for r in same), 3),
            round(statistics.median(r.gateway_cpu_ms_per_request for r in same), 3),
        ))
    return merged


@contextlib.contextmanager
def _configs(redis_url: str | None, postgres: str | None, peer: str | None = None,
             baseline_tree: str | None = None) -> Iterator[list[Config]]:
    both = {"requests_per_minute": HIGH, "tokens_per_minute": HIGH}
    configs = [
        Config("off", None),
        Config("on", {"defaults": both}, env={}),
        Config("on, no token limit", {"defaults": {"requests_per_minute": HIGH}}),
    ]
    if baseline_tree:
        tree = str(pathlib.Path(baseline_tree).resolve())
        configs.insert(1, Config("on, before", {"defaults": both},
                                 env={"PYTHONPATH": tree}, cwd=tree))
    if peer:
        if peer != PEER:
            raise ValueError(f"unknown peer {peer!r} (known: {PEER})")
        configs.insert(0, Config(PEER, None, peer=True))
    with contextlib.ExitStack() as stack:
        if redis_url and postgres:
            from ward.benchmarks.audit import scratch_postgres_database

            database = stack.enter_context(scratch_postgres_database(postgres, "ward_gateway_bench"))
            shared = {"WARD_REDIS_URL": redis_url, "WARD_DATABASE_URL": database}
            if baseline_tree:
                configs.append(Config("on, Redis + PostgreSQL, before", {"defaults": both},
                                      env={**shared, "PYTHONPATH": tree}, cwd=tree, database_url=database))
            configs.append(Config("on, Redis + PostgreSQL", {"defaults": both}, env=shared, database_url=database))
        yield configs


def run_benchmark(*, requests: int, clients: list[int], rounds: int, redis_url: str | None = None,
                  postgres: str | None = None, warmup: int = 300, peer: str | None = None,
                  baseline_tree: str | None = None) -> list[Row]:
    """Starts the worker and one gateway per configuration, measures them in turns, stops them all."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="ward-gateway-bench-"))
    key_prefix = f"{BENCH_KEYS}:{uuid.uuid4().hex[:8]}"  # this run's keys: another run's stay untouched
    worker, address = _start_worker(workdir)
    gateways: list[Gateway] = []
    try:
        with _configs(redis_url, postgres, peer, baseline_tree) as configs:
            try:
                gateways = [_start_gateway(config, address, workdir, key_prefix) for config in configs]
                for gateway in gateways:  # warm-up: imports, caches, connections
                    _measure(gateway, 1, warmup)
                    _measure(gateway, 16, warmup)
                results = []
                for _ in range(rounds):
                    results.append([_measure(g, c, requests * (2 if c > 1 else 1)) for g in gateways for c in clients])
                return _median_rows(results)
            finally:
                for gateway in gateways:
                    gateway.process.send_signal(signal.SIGTERM)
                for gateway in gateways:
                    gateway.process.wait(30)
                if redis_url:
                    _delete_bench_keys(redis_url, key_prefix)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)


def _delete_bench_keys(redis_url: str, key_prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{key_prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


def litellm_req_s(rows: list[Row]) -> dict[int, float]:
    """LiteLLM's req/s per client count: measured in this run when it was, else the recorded anchor."""
    measured = {r.clients: r.requests_per_s for r in rows if r.config == PEER}
    return measured or LITELLM_REQ_S


def format_table(rows: list[Row]) -> str:
    peer = litellm_req_s(rows)
    lines = [f"{'configuration':<26}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'gw CPU ms/req':>15}{'x LiteLLM':>11}"]
    for r in rows:
        anchor = peer.get(r.clients)
        ratio = f"{r.requests_per_s / anchor:.1f}" if anchor else ""
        lines.append(f"{r.config:<26}{r.clients:>8}{r.requests_per_s:>9.1f}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}"
                     f"{r.gateway_cpu_ms_per_request:>15.3f}{ratio:>11}")
    return "\n".join(lines)


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
