"""``ward up``: a gateway and two workers on this machine, with embedded defaults.

Starts a generation worker (``--model``, default smollm2-135m-instruct) and an embedding worker
(all-minilm-l6-v2) on loopback ports, then a gateway in front of them with identity, quotas and the
audit log on: its database (teams, keys, the audit log) is SQLite in the data directory unless
WARD_DATABASE_URL says otherwise, quota limits come from ``<data dir>/quotas.yaml`` and the admin
API, and the rest of the environment (WARD_OIDC_*, WARD_REDIS_URL, ...) reaches the gateway unchanged. It waits
for the gateway's /readyz, prints the URL and the keys, and runs until Ctrl-C or SIGTERM, when it
stops the gateway, then the workers, and exits 0.

A worker that exits later is started again on the same port (``ward.supervised_worker``: backoff
1 s doubling to 30 s, every restart reported); meanwhile the gateway answers its model 503 with
Retry-After and serves the others. After ``--restart-limit`` crashes within ``--restart-window``
seconds the worker is left down and the other models keep serving; when no worker is left, or the
gateway exits, everything stops and ``ward up`` exits 1. A worker that fails its first start (a bad
model, say) is never retried: ``ward up`` exits 1 with the end of its log.

Every process is separate and they talk real gRPC, exactly as in a multi-machine deployment.
"""
from __future__ import annotations

import argparse
import errno
import os
import pathlib
import signal
import socket
import ssl
import sys
import threading
import time
from typing import Any

import yaml

from ward.paths import default_data_dir
from ward.restart_policy import RestartPolicy
from ward.supervised_worker import SupervisedWorker
from ward.supervisor import Child, ChildFailed, Supervisor, describe_exit
from worker.server.addresses import is_loopback
from worker.server.tls_files import tls_files_problem

DEFAULT_PORT = 8000
READY_PREFIX = "WARD_WORKER_READY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gateway.auth.tls_server import add_tls_arguments

    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address the gateway binds (default 127.0.0.1)")
    add("--port", type=int, default=DEFAULT_PORT, help=f"gateway port (default {DEFAULT_PORT})")
    add("--data-dir", type=pathlib.Path,
        help="models, database and logs (default: $WARD_DATA_DIR or ~/.local/share/ward)")
    add("--model", default="smollm2-135m-instruct", help="generation model: a directory or a packaged name")
    add("--embedding-model", default="all-minilm-l6-v2", help="embedding model: a directory or a packaged name")
    add("--api-key", help="a Ward key (ward-...) for team `default`; default: one made on first start, printed once")
    add("--admin-key",
        help="bootstrap platform-admin key (>= 24 characters); default: one made on first start, printed once")
    add("--startup-timeout", type=float, default=600.0, help="seconds to wait for every process to be ready")
    add("--restart-limit", type=int, default=RestartPolicy.max_crashes, metavar="N",
        help="give up on a worker after N crashes within --restart-window; 1: never restart "
             f"(default {RestartPolicy.max_crashes})")
    add("--restart-window", type=float, default=RestartPolicy.window_s, metavar="SECONDS",
        help=f"the crash-loop window of --restart-limit (default {RestartPolicy.window_s:.0f})")
    add_tls_arguments(parser)
    add("--insecure", action="store_true",
        help="serve plaintext HTTP on a non-loopback --host (API keys and prompts in the clear)")


class _StopRequested:
    """Set by SIGINT/SIGTERM; ``ward up`` checks it between steps."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.event.set())

    def __call__(self) -> bool:
        return self.event.is_set()


def run(args: argparse.Namespace) -> int:
    from gateway.auth.tls_server import tls_settings_from_args

    if args.admin_key is not None and len(args.admin_key) < 24:
        print("ward up: --admin-key must be at least 24 characters (use a generated key)", file=sys.stderr)
        return 2
    try:
        tls = tls_settings_from_args(args)
    except ValueError as exc:
        print(f"ward up: {exc}", file=sys.stderr)
        return 2
    tls_error = _tls_files_error(tls)
    if tls_error is not None:
        print(f"ward up: {tls_error}", file=sys.stderr)
        return 2
    if args.restart_limit < 1 or not args.restart_window > 0:
        print("ward up: --restart-limit must be at least 1 and --restart-window positive", file=sys.stderr)
        return 2
    if not args.startup_timeout > 0:
        print("ward up: --startup-timeout must be positive", file=sys.stderr)
        return 2
    policy = RestartPolicy(max_crashes=args.restart_limit, window_s=args.restart_window)
    bind_error = _bind_error(args.host, args.port)
    if bind_error is not None:
        print(f"ward up: {bind_error}", file=sys.stderr)
        return 2
    if tls is None and not is_loopback(args.host) and not args.insecure:
        print(f"ward up: refusing to serve plaintext on {args.host}: API keys and prompts would cross the network "
              "in the clear; give --tls-cert/--tls-key [--client-ca], or --insecure if you really mean it",
              file=sys.stderr)
        return 2
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    if data_dir.exists() and not data_dir.is_dir():
        print(f"ward up: --data-dir {data_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file on the way, no permission, a read-only disk
        print(f"ward up: cannot create --data-dir {data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    stop = _StopRequested()
    stop.install()

    from ward.up_keys import KeySetupError

    try:
        keys = _prepare_database(data_dir, args)
    except KeySetupError as exc:
        print(f"ward up: {exc}", file=sys.stderr)
        return 2

    env = {**os.environ, "WARD_DATA_DIR": str(data_dir)}
    supervisor = Supervisor(data_dir / "logs")
    gateway: Child | None = None
    workers: list[Child] = []
    watched: list[SupervisedWorker] = []
    status = 0
    try:
        tasks = {"worker-generate": (args.model, "generate"), "worker-embed": (args.embedding_model, "embed")}
        workers = [supervisor.start(name, _worker_argv(model, task, 0), env) for name, (model, task) in tasks.items()]
        routes: dict[str, Any] = {}
        for worker in workers:
            line = supervisor.wait_for_line(worker, READY_PREFIX, args.startup_timeout, stop)
            if line is None:
                return 0
            ready = _ready_fields(line)
            routes[ready["model"]] = {"workers": [f"127.0.0.1:{ready['port']}"]}
            model, task = tasks[worker.name]
            watched.append(SupervisedWorker(
                supervisor, worker, port=int(ready["port"]), model=ready["model"],
                argv_for_port=lambda port, model=model, task=task: _worker_argv(model, task, port),
                env=env, policy=policy, ready_prefix=READY_PREFIX, startup_timeout_s=args.startup_timeout,
                report=_report,
            ))
        config = _write_gateway_config(data_dir, routes)
        gateway = supervisor.start("gateway", _gateway_argv(args, config, data_dir), _gateway_env(env, args.admin_key))
        scheme = "https" if tls else "http"
        probe_host = _probe_host(args.host)
        if not _wait_gateway_ready(gateway, scheme, probe_host, args.port, tls, args.startup_timeout, stop, watched):
            return 0
        _print_banner(f"{scheme}://{probe_host}:{args.port}/v1", list(routes), keys, data_dir)
        while not stop():
            _check_processes(gateway, watched)
            stop.event.wait(0.25)
        print("ward up: stopping", flush=True)
    except ChildFailed as exc:
        print(f"ward up: {exc}", file=sys.stderr)
        status = 1
    finally:
        supervisor.stop_all([[gateway] if gateway else [], [w.child for w in watched] or workers])
    return status


def _report(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _check_processes(gateway: Child, watched: list[SupervisedWorker]) -> None:
    """Restarts what needs it; raises ChildFailed when the gateway exited or no worker is left."""
    if gateway.exited():
        raise gateway.failure(f"exited ({describe_exit(gateway.process.returncode)})")
    for worker in watched:
        was_down = worker.gave_up
        worker.check()
        if worker.gave_up and not was_down:
            serving = [w.model for w in watched if not w.gave_up]
            if serving:
                _report(f"ward up: {worker.model} stays down (its requests get 503) until ward up is restarted; "
                        f"still serving {', '.join(serving)}")
    if all(worker.gave_up for worker in watched):
        raise ChildFailed("no worker left to serve (every one was given up on, see above); stopping")


def _prepare_database(data_dir: pathlib.Path, args: argparse.Namespace):
    """Migrates the gateway database and makes sure the local keys exist; returns what to print."""
    from gateway.db import create_db_engine, database_url, upgrade_to_head
    from ward.up_keys import ensure_local_keys

    url = database_url(data_dir)  # WARD_DATABASE_URL wins over the data directory's SQLite file
    upgrade_to_head(url)
    engine = create_db_engine(url)
    try:
        return ensure_local_keys(engine, user_key=args.api_key, admin_key=args.admin_key)
    finally:
        engine.dispose()


def _worker_argv(model: str, task: str, port: int) -> list[str]:
    # Workers listen on loopback only, plaintext: the gateway is their one client on this host.
    # Port 0 at the first start (a free one); a restart reuses the port the gateway knows.
    return [sys.executable, "-m", "ward", "worker", "--model", model, "--task", task,
            "--host", "127.0.0.1", "--port", str(port)]


def _ready_fields(line: str) -> dict[str, str]:
    """``WARD_WORKER_READY port=N model=NAME task=T`` as a dict. NAME is a directory's name when not
    given, so it may hold spaces: it is everything between ``model=`` and `` task=``."""
    head, _, task = line.rpartition(" task=")
    head, _, model = head.partition(" model=")
    fields = dict(part.split("=", 1) for part in head.split()[1:] if "=" in part)
    return {**fields, "model": model, "task": task}


QUOTA_FILE_NAME = "quotas.yaml"
QUOTA_FILE_TEMPLATE = """\
# Per-team quotas of this Ward (docs/quotas.md). Edits are picked up within a second; a version that
# does not validate is refused (the gateway log says why) and the previous limits stay in force.
# Limits set with PUT /admin/teams/{team}/quotas replace this file's for that scope.
#
# defaults:                      # team-scope limits of every team (null or left out: unlimited)
#   requests_per_minute: 120
#   tokens_per_minute: 200000
# teams:
#   radiology:
#     limits: {tokens_per_day: 2000000}
defaults: {}
teams: {}
"""


def _quota_settings(data_dir: pathlib.Path) -> dict[str, str]:
    """Quotas of ``ward up``: limits from ``<data dir>/quotas.yaml`` (written once, unlimited, for the
    operator to edit), admin-set limits kept in the data directory so they survive restarts. With
    WARD_REDIS_URL the counters and admin-set limits live in Redis instead."""
    quota_file = data_dir / QUOTA_FILE_NAME
    if not quota_file.exists():
        quota_file.write_text(QUOTA_FILE_TEMPLATE)
    return {"config_file": str(quota_file), "overrides_file": str(data_dir / "quota" / "overrides.json")}


def _write_gateway_config(data_dir: pathlib.Path, routes: dict[str, Any]) -> pathlib.Path:
    # No secret goes in this file: the admin key reaches the gateway through its environment. The
    # gateway's own data directory (--data-dir) holds its database and the audit log's signing key.
    run_dir = data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "gateway.yaml"
    path.write_text(yaml.safe_dump({"models": routes, "quota": _quota_settings(data_dir)}, sort_keys=True))
    return path


def _gateway_argv(args: argparse.Namespace, config: pathlib.Path, data_dir: pathlib.Path) -> list[str]:
    argv = [sys.executable, "-m", "ward", "gateway", "--config", str(config), "--host", args.host,
            "--port", str(args.port), "--data-dir", str(data_dir)]
    for flag in ("tls_cert", "tls_key", "client_ca"):
        if getattr(args, flag):
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.client_ca:
        argv += ["--client-cert", args.client_cert]
    return argv


def _gateway_env(env: dict[str, str], admin_key: str | None) -> dict[str, str]:
    return {**env, "WARD_AUTH__ADMIN_KEY": admin_key} if admin_key else env


def _bind_error(host: str, port: int) -> str | None:
    """Why the gateway cannot bind its address, or None (checked up front, so a Ward already serving
    there is not mistaken for ours). SO_REUSEADDR as uvicorn sets it, so closed connections do not count."""
    if not 1 <= port <= 65535:
        return f"--port must be 1 up to 65535, got {port}"
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        return None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"{host}:{port} is in use (another Ward?); choose another --port"
        # an unknown name, or an address that is not this machine's: not a busy port
        return f"cannot bind {host}:{port}: {exc.strerror or exc}; check --host"


def _tls_files_error(tls) -> str | None:
    """Why the gateway could not serve with these TLS files, or None; read before anything starts,
    instead of the gateway failing with a traceback once the workers have loaded."""
    if tls is None:
        return None
    return tls_files_problem(tls.cert_file, tls.key_file, tls.client_ca_file)


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def _wait_gateway_ready(
    gateway: Child, scheme: str, host: str, port: int, tls, timeout_s: float, stop, watched: list[SupervisedWorker]
) -> bool:
    """Waits until /readyz says every model can serve; False when a stop was requested first.
    Raises ChildFailed. A worker that exits meanwhile is restarted as later on.

    With client certificates required, ward up holds none, so an accepted TCP connection is the
    sign of life instead (the workers are ready already).
    """
    import httpx

    needs_client_cert = tls is not None and tls.client_ca_file and tls.client_cert == "required"
    deadline = time.monotonic() + timeout_s
    url = f"{scheme}://{host}:{port}/readyz"
    while time.monotonic() < deadline:
        if stop():
            return False
        if gateway.exited():
            raise gateway.failure(f"exited ({describe_exit(gateway.process.returncode)}) before it was ready")
        _check_processes(gateway, watched)
        try:
            if needs_client_cert:
                with socket.create_connection((host, port), timeout=1):
                    return True
            # Our own child on this host: its certificate need not be checked to see it is up.
            ready = httpx.get(url, timeout=2, verify=_unverified_context() if tls else True)
            # 200 means some model can serve; the banner waits for each one with a worker left.
            if ready.status_code == 200:
                models = ready.json()["models"]
                if all(models[w.model]["ready"] for w in watched if not w.gave_up):
                    return True
        except (httpx.HTTPError, OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.2)
    raise gateway.failure(f"was not ready after {timeout_s:.0f} s")


def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _verify_command(data_dir: pathlib.Path) -> str:
    if os.environ.get("WARD_DATABASE_URL"):  # the database is elsewhere; the signing key is still here
        return f"ward audit verify --signing-key {data_dir / 'audit' / 'checkpoint-key.pem'}"
    return f"ward audit verify --data-dir {data_dir}"


def _print_banner(url: str, models: list[str], keys, data_dir: pathlib.Path) -> None:
    lines = [f"Ward is up: {url}", f"Models: {', '.join(models)}"]
    if keys.user_key:
        lines.append(f"API key (team default, role user): {keys.user_key}")
    else:
        lines.append("API key (team default, role user): shown on the first start only; "
                     "make another with `ward keys create --team default`")
    if keys.admin_key:
        lines.append(f"Platform admin key: {keys.admin_key}")
    else:
        lines.append("Platform admin key: shown on the first start only; "
                     "make another with `ward keys create --team platform --role platform_admin`")
    lines += [f"Console: {url.removesuffix('/v1')}/console (admins and auditors; sign in with a key)",
              f"Quotas: {data_dir / QUOTA_FILE_NAME} (reloaded on change)",
              f"Audit log: check it with `{_verify_command(data_dir)}`",
              f"Logs: {data_dir / 'logs'}", "Press Ctrl-C to stop."]
    print("\n".join(lines), flush=True)
