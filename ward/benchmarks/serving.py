"""`ward bench serving`: serving through Ward's whole stack: a `ward worker` and a `ward gateway` with identity (a real
API key of a real team), quotas (limits enforced on every request) and the audit log (SQLite)
switched on, driven by the shared streaming load tool (`serving_load.py`). A script, not a test.

    ward bench serving --load-tool PATH/serving_load.py --tokenizer-tool PATH/dummy_tokenizer.py \
        --model llama-3.1-8b --device cuda --concurrency 1 16 64 256 --out DIR

Prints one JSON line per concurrency level (TTFT, TPOT, ITL p50/p99, output tok/s), then a summary
with the audit chain check, and writes serving_stack.json into --out.
"""
from __future__ import annotations

import argparse
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

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ward(*args: str, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ward", *args], env=env, capture_output=True, text=True, check=True, **kw)


def start(args: list[str], env: dict, log: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ward", *args], env=env, stdout=subprocess.PIPE,
                            stderr=open(log, "w"), text=True, start_new_session=True)


def wait_ready_line(proc: subprocess.Popen, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.startswith("WARD_WORKER_READY"):
            return line
        if proc.poll() is not None:
            raise SystemExit(f"worker exited with {proc.returncode} before it was ready")
    raise SystemExit("worker not ready in time")


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


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--load-tool", help="serving: the shared serving_load.py")
    ap.add_argument("--tokenizer-tool", help="serving: the shared dummy_tokenizer.py")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--input", type=int, default=1024)
    ap.add_argument("--output", type=int, default=128)


def run(a: argparse.Namespace) -> int:
    """Runs the stack for ``a.model`` (a shape name), ``a.device``, ``a.max_model_len``, ``a.out``."""
    if not (a.load_tool and a.tokenizer_tool):
        print("ward bench serving: --load-tool and --tokenizer-tool are required", file=sys.stderr)
        return 2
    a.shape = a.model
    from ward.benchmarks.models import SHAPES, write_config_dir

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pathlib.Path(tempfile.mkdtemp(prefix="ward-serving-"))
    env = {**os.environ, "WARD_DATA_DIR": str(data), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("WARD_DATABASE_URL", None)
    env.pop("WARD_REDIS_URL", None)  # the embedded, in-process quota store
    model_dir = write_config_dir(a.shape, str(data / "model"))
    subprocess.run([sys.executable, a.tokenizer_tool, model_dir, str(SHAPES[a.shape]["vocab_size"])], check=True)
    name = a.shape
    procs: list[subprocess.Popen] = []
    report: dict = {"date": time.strftime("%Y-%m-%d"), "shape": a.shape, "input": a.input, "output": a.output}
    try:
        t0 = time.monotonic()
        worker = start(["worker", "--model", model_dir, "--load-format", "dummy", "--device", a.device, "--port", "0",
                        "--served-model-name", name, "--max-model-len", str(a.max_model_len), "--dtype", "bfloat16"],
                       env, out / "worker.log")
        procs.append(worker)
        port = int(wait_ready_line(worker, 600).split("port=")[1].split()[0])
        report["worker_ready_s"] = round(time.monotonic() - t0, 1)
        # identity: a team and a user key in the gateway database
        ward("teams", "create", "bench", "--data-dir", str(data), env=env)
        key = json.loads(ward("keys", "create", "--team", "bench", "--json", "--data-dir", str(data), env=env).stdout)["key"]
        # quotas: real limits on the team, high enough not to throttle the load itself
        quotas = data / "quotas.yaml"
        quotas.write_text("teams:\n  bench:\n    limits:\n      requests_per_minute: 100000\n"
                          "      tokens_per_minute: 1000000000\n      max_concurrent: 1024\n"
                          "      tokens_per_day: 100000000000\n")
        gw_port = free_port()
        cfg = data / "gateway.yaml"
        cfg.write_text(json.dumps({
            "host": "127.0.0.1", "port": gw_port, "data_dir": str(data),
            "models": {name: {"workers": [f"127.0.0.1:{port}"]}},
            "quota": {"config_file": str(quotas)}, "audit": {},
        }))
        gateway = start(["gateway", "--config", str(cfg)], env, out / "gateway.log")
        procs.append(gateway)
        base = f"http://127.0.0.1:{gw_port}"
        wait_http(base + "/readyz", 120)
        report["stack_ready_s"] = round(time.monotonic() - t0, 1)
        levels = []
        for c in a.concurrency:
            res = subprocess.run([sys.executable, a.load_tool, base, name, "--concurrency", str(c), "--input",
                                  str(a.input), "--output", str(a.output), "--api-key", key],
                                 capture_output=True, text=True, env=env, timeout=900)
            line = [x for x in res.stdout.splitlines() if x.startswith("{")]
            if res.returncode != 0 or not line:
                report["failed_level"] = {"concurrency": c, "stderr": res.stderr[-3000:]}
                print(f"load tool failed at concurrency {c}:\n{res.stderr[-3000:]}", file=sys.stderr, flush=True)
                break
            levels.append(json.loads(line[-1]))
            print(line[-1], flush=True)
        report["levels"] = levels
        probe = urllib.request.Request(
            base + "/v1/completions", data=json.dumps({"model": name, "prompt": [1000, 1001], "max_tokens": 1}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(probe) as r:  # quotas are on: every answer carries the limits
            report["rate_limit_headers"] = {k: v for k, v in r.headers.items() if k.lower().startswith("x-ratelimit")}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    verify = subprocess.run([sys.executable, "-m", "ward", "audit", "verify", "--data-dir", str(data)],
                            capture_output=True, text=True, env=env)
    report["audit_verify_exit"] = verify.returncode
    report["audit_verify"] = (verify.stdout + verify.stderr).strip()[-400:]
    (out / "serving_stack.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report), flush=True)
    return 0


