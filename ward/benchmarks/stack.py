"""Ward's whole stack for benchmarks: one `ward worker` and one governed `ward gateway` (identity, quotas,
audit log on SQLite) as separate processes, with a key per team. A context manager:

    with GovernedStack(model_dir, name, worker_args, teams={"a": {}, "b": {"weight": 2}}, out=out) as stack:
        stack.base, stack.keys["a"], stack.worker_ready_s
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent

# Real limits on every team, high enough that they never throttle a benchmark's own load.
GENEROUS_LIMITS = {"requests_per_minute": 1_000_000, "tokens_per_minute": 10_000_000_000, "max_concurrent": 100_000,
                   "tokens_per_day": 100_000_000_000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


READY_PREFIX = "WARD_WORKER_READY"  # the line `ward worker` prints once it serves: "... port=N model=..."


def ready_line_port(line: str) -> int | None:
    """The port a worker's ready line names (None for any other line)."""
    return int(line.split("port=")[1].split()[0]) if line.startswith(READY_PREFIX) else None


def worker_ready_port(proc: subprocess.Popen) -> int:
    """The port of a starting ``ward worker`` process (stdout a text pipe), read from its ready line;
    RuntimeError if it exits first."""
    for line in proc.stdout:
        port = ready_line_port(line)
        if port is not None:
            return port
    raise RuntimeError(f"the worker exited with {proc.wait()} before it was ready")


def wait_http(url: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} not ready in time")


class GovernedStack:
    """A worker and a governed gateway for ``teams`` (team name -> scheduling policy, e.g. weight/priority)."""

    def __init__(self, model_dir: str, served_name: str, worker_args: Sequence[str], *,
                 teams: Mapping[str, Mapping[str, Any]], out: pathlib.Path, data_dir: pathlib.Path | None = None,
                 gateways: int = 1, tree: pathlib.Path | None = None) -> None:
        if gateways < 1:
            raise ValueError(f"gateways must be >= 1, got {gateways}")
        self.model_dir, self.name, self.worker_args = model_dir, served_name, list(worker_args)
        # another checkout to run the processes from; `python -m` looks in its working directory
        # before PYTHONPATH, so both point there (None: this checkout, from the caller's directory)
        self.tree = tree.resolve() if tree is not None else None
        # gateway processes sharing the data directory (the audit log's SQLite file, the API keys), each
        # on its own port, as replicas behind a balancer; quotas stay in each process (generous limits)
        self.gateways = gateways
        self.bases: list[str] = []
        self.teams, self.out = dict(teams), out
        self.data = data_dir or pathlib.Path(tempfile.mkdtemp(prefix="ward-stack-"))
        self.env = {**os.environ, "WARD_DATA_DIR": str(self.data), "PYTHONPATH": os.pathsep.join(
            filter(None, [str(self.tree or ROOT), os.environ.get("PYTHONPATH")]))}
        self.env.pop("WARD_DATABASE_URL", None)
        self.env.pop("WARD_REDIS_URL", None)  # the embedded, in-process quota store
        self.procs: list[subprocess.Popen] = []
        self.keys: dict[str, str] = {}
        self.base = ""
        self.worker_ready_s = self.stack_ready_s = 0.0

    def ward(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ward", *args], env=self.env, capture_output=True, text=True,
                              check=True, cwd=self.tree)

    def _start(self, args: list[str], log_name: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "ward", *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=open(self.out / log_name, "w"), text=True, start_new_session=True,
                                cwd=self.tree)
        self.procs.append(proc)
        return proc

    def _wait_worker(self, proc: subprocess.Popen, timeout: float) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            port = ready_line_port(proc.stdout.readline())
            if port is not None:
                return port
            if proc.poll() is not None:
                raise SystemExit(f"worker exited with {proc.returncode} before it was ready (log: worker.log)")
        raise SystemExit("worker not ready in time")

    def write_quotas(self) -> pathlib.Path:
        # a team's scheduling policy (priority, weight) is part of its entry, beside its limits
        teams = {team: {"limits": dict(GENEROUS_LIMITS), **dict(policy)} for team, policy in self.teams.items()}
        path = self.data / "quotas.yaml"
        path.write_text(yaml.safe_dump({"teams": teams}, sort_keys=False))
        return path

    def __enter__(self) -> "GovernedStack":
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            t0 = time.monotonic()
            worker = self._start(["worker", "--model", self.model_dir, "--port", "0", "--served-model-name", self.name,
                                  *self.worker_args], "worker.log")
            port = self._wait_worker(worker, 600)
            self.worker_ready_s = round(time.monotonic() - t0, 1)
            for team in self.teams:
                self.ward("teams", "create", team, "--data-dir", str(self.data))
                created = self.ward("keys", "create", "--team", team, "--json", "--data-dir", str(self.data))
                self.keys[team] = json.loads(created.stdout)["key"]
            quotas = self.write_quotas()
            for index in range(self.gateways):
                gw_port = free_port()
                suffix = "" if index == 0 else f"-{index + 1}"
                cfg = self.data / f"gateway{suffix}.yaml"
                cfg.write_text(json.dumps({
                    "host": "127.0.0.1", "port": gw_port, "data_dir": str(self.data),
                    "models": {self.name: {"workers": [f"127.0.0.1:{port}"]}},
                    "quota": {"config_file": str(quotas), "gateway_replicas": self.gateways}, "audit": {},
                }))
                self._start(["gateway", "--config", str(cfg)], f"gateway{suffix}.log")
                self.bases.append(f"http://127.0.0.1:{gw_port}")
            for base in self.bases:
                wait_http(base + "/readyz", 120)
            self.base = self.bases[0]
            self.stack_ready_s = round(time.monotonic() - t0, 1)
            return self
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def verify_audit(self) -> tuple[int, str]:
        """``ward audit verify`` over the stack's log: (exit status, the end of what it printed)."""
        verify = subprocess.run([sys.executable, "-m", "ward", "audit", "verify", "--data-dir", str(self.data)],
                                capture_output=True, text=True, env=self.env, cwd=self.tree)
        return verify.returncode, (verify.stdout + verify.stderr).strip()[-400:]
