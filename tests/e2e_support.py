"""Real processes for the end-to-end tests: ``ward worker`` on the default models (CPU) or the fake
worker, ``ward gateway`` in front of them, and helpers to reach workers over gRPC and to make teams and
keys.

A ``ProcessStack`` owns every process it starts (through ``ward.supervisor``: own session, SIGTERM if
the test process dies) and stops them all in ``close()``, which fixtures call in ``finally``.
"""
from __future__ import annotations

import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import yaml

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc
from ward.supervisor import Child, Supervisor

from ports import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATE_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
READY_PREFIX = "WARD_WORKER_READY"
# Small engines: a 1,024-token context and 256 KV blocks (4,096 tokens) keep each worker under 1 GB.
SMALL_ENGINE = ("--max-model-len", "1024", "--max-num-seqs", "16", "--num-kv-blocks", "256", "--device", "cpu")
FAST_ROUTING = {"poll_interval_s": 0.2, "poll_timeout_s": 1.0, "dead_after_s": 2.0}
START_TIMEOUT_S = 180.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's WARD_* settings, one torch thread per process
    (2-core machines run several workers at once), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    child: Child
    port: int = 0
    model: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def process(self):
        return self.child.process


@dataclass
class GatewayProcess:
    child: Child
    url: str  # base URL, without /v1
    config_path: pathlib.Path
    data_dir: pathlib.Path

    @property
    def process(self):
        return self.child.process

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'ward.db'}"


@dataclass
class ProcessStack:
    """Workers and gateways of one test module or test; ``close()`` stops them all (gateways first)."""

    workdir: pathlib.Path
    supervisor: Supervisor = field(init=False)
    workers: list[WorkerProcess] = field(default_factory=list)
    gateways: list[GatewayProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.workdir / "logs")

    # ---- workers -------------------------------------------------------------------------
    def start_worker(
        self,
        name: str,
        *extra: str,
        task: str = "generate",
        model: str | None = None,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """Starts ``ward worker`` (or ``argv`` followed by the worker's arguments); see wait_ready."""
        from worker.model.registry import resolve_model

        served = GENERATE_MODEL if task == "generate" else EMBED_MODEL
        args = ["--model", model or resolve_model(served), "--served-model-name", served, "--task", task,
                "--host", "127.0.0.1", "--port", "0"]
        if task == "generate":
            args += SMALL_ENGINE
        command = list(argv) if argv is not None else [sys.executable, "-m", "ward", "worker"]
        child = self.supervisor.start(name, [*command, *args, *extra], env or clean_env())
        worker = WorkerProcess(child)
        self.workers.append(worker)
        return worker

    def start_fake_worker(self, name: str, model: str, *args: str) -> WorkerProcess:
        """``tests/fake_worker.py`` as a process (deterministic words, no model): for tests where the
        model's output does not matter. Returns once it serves."""
        argv = [sys.executable, str(ROOT / "tests" / "fake_worker.py"), "--model", model, "--worker-id", name, *args]
        child = self.supervisor.start(name, argv, clean_env())
        line = self.supervisor.wait_for_line(child, "PORT ", START_TIMEOUT_S)
        worker = WorkerProcess(child, int(line.split()[1]), model)
        self.workers.append(worker)
        return worker

    def wait_ready(self, *workers: WorkerProcess) -> None:
        """Waits for each worker's ready line and records its port and model."""
        for worker in workers:
            line = self.supervisor.wait_for_line(worker.child, READY_PREFIX, START_TIMEOUT_S)
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            worker.port, worker.model = int(fields["port"]), fields["model"]

    def workers_ready(self, *specs: tuple[str, str]) -> list[WorkerProcess]:
        """Starts workers given as (name, task) together, then waits for all of them."""
        started = [self.start_worker(name, task=task) for name, task in specs]
        self.wait_ready(*started)
        return started

    # ---- gateways ------------------------------------------------------------------------
    def start_gateway(
        self,
        models: Mapping[str, Sequence[str]],
        *,
        config: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        scheme: str = "http",
        wait: bool = True,
        verify: Any = True,
        port: int | None = None,
    ) -> GatewayProcess:
        """``ward gateway --config`` for ``models`` (name -> worker addresses) on a free port, its
        SQLite database in its own data directory; waits for /readyz (200) unless ``wait`` is False."""
        index = len(self.gateways)
        data_dir = self.workdir / f"gateway-{index}"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        body = {"routing": dict(FAST_ROUTING), **(config or {})}
        body["models"] = {name: {"workers": list(addresses)} for name, addresses in models.items()}
        config_path = data_dir / "gateway.yaml"
        config_path.write_text(yaml.safe_dump(body))
        argv = [sys.executable, "-m", "ward", "gateway", "--config", str(config_path), "--port", str(port),
                "--data-dir", str(data_dir), "--log-level", "warning", *args]
        child = self.supervisor.start(f"gateway-{index}", argv, env or clean_env())
        gateway = GatewayProcess(child, f"{scheme}://127.0.0.1:{port}", config_path, data_dir)
        self.gateways.append(gateway)
        if wait:
            wait_for_gateway(gateway, verify=verify)
        return gateway

    def close(self) -> None:
        self.supervisor.stop_all([[g.child for g in self.gateways], [w.child for w in self.workers]], timeout_s=20)


def wait_for_gateway(gateway: GatewayProcess, *, timeout_s: float = 60.0, verify: Any = True, cert: Any = None) -> None:
    """Waits until the gateway's /readyz says every model can serve (200 alone means at least one
    can); raises with its log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.child.exited():
            raise gateway.child.failure(f"exited with status {gateway.process.returncode}")
        try:
            with httpx.Client(verify=verify, cert=cert, timeout=2) as client:
                if every_model_ready(client.get(f"{gateway.url}/readyz")):
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise gateway.child.failure("was not ready in time")


def every_model_ready(readyz: httpx.Response) -> bool:
    """Whether a /readyz answer says every configured model has a ready worker."""
    return readyz.status_code == 200 and all(m["ready"] for m in readyz.json()["models"].values())


# ---- workers over gRPC -------------------------------------------------------------------------
def load_stats(address: str, credentials: grpc.ChannelCredentials | None = None) -> pb.LoadStatsResponse:
    with _channel(address, credentials) as channel:
        return pb_grpc.WorkerStub(channel).LoadStats(pb.LoadStatsRequest(), timeout=5)


def health(address: str, credentials: grpc.ChannelCredentials | None = None, timeout: float = 5) -> pb.HealthResponse:
    with _channel(address, credentials) as channel:
        return pb_grpc.WorkerStub(channel).Health(pb.HealthRequest(), timeout=timeout)


def chat_token_count(address: str, model: str, messages: Sequence[Mapping[str, str]]) -> int:
    """The worker's Tokenize count of a chat prompt (template applied, generation prompt added)."""
    conversation = pb.Conversation(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages], add_generation_prompt=True
    )
    with _channel(address, None) as channel:
        request = pb.TokenizeRequest(model=model, prompt=pb.Prompt(chat=conversation))
        return pb_grpc.WorkerStub(channel).Tokenize(request, timeout=10).count


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Polls ``predicate`` until it is true (returns True) or the timeout passes (returns False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)


# ---- teams and keys ------------------------------------------------------------------------------
def make_keys(database_url: str, wanted: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Teams and API keys in a (migrated here) gateway database: label -> (team, role) gives label -> key."""
    from gateway.auth.principal import Role
    from gateway.auth.stores import KeyStore, TeamStore
    from gateway.db import create_db_engine, upgrade_to_head

    upgrade_to_head(database_url)
    engine = create_db_engine(database_url)
    try:
        keys = {}
        for label, (team, role) in wanted.items():
            TeamStore(engine).ensure(team)
            keys[label] = KeyStore(engine).create(team, Role(role), description=f"e2e {label}")[1]
        return keys
    finally:
        engine.dispose()
