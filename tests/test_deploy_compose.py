"""The compose stack for pilots (deploy/compose): valid against the Compose specification's schema
(shipped in check-jsonschema, no network), hardened services, private networks, and files that are
valid Ward, Prometheus and Grafana configuration."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from gateway.quota.config_file import load_quota_config
from gateway.settings import GatewaySettings

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
OUR_IMAGES_HEALTHCHECK = {"gateway": "gateway.Dockerfile", "worker": "worker.Dockerfile"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def check_compose_schema(path: pathlib.Path) -> subprocess.CompletedProcess:
    checker = pathlib.Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_the_compose_file_is_valid_against_the_compose_specification():
    done = check_compose_schema(COMPOSE_FILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_refuses_an_invalid_compose_file(tmp_path):
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  gateway:\n    image: ward/gateway\n    read_only: sometimes\n    restart_policy: always\n")
    assert check_compose_schema(bad).returncode != 0


def test_every_service_runs_hardened_as_a_non_root_user_with_limits_and_a_health_check(compose):
    for name, service in compose["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        uid = str(service.get("user", "0")).split(":")[0]
        assert uid.isdigit() and uid != "0", f"{name} runs as root"
        assert service["deploy"]["resources"]["limits"]["memory"], name
        if name in OUR_IMAGES_HEALTHCHECK:  # the image's own HEALTHCHECK (tests/test_deploy_images.py)
            assert "HEALTHCHECK" in (ROOT / "deploy" / "images" / OUR_IMAGES_HEALTHCHECK[name]).read_text()
        else:
            assert service["healthcheck"]["test"][0] == "CMD", name


def test_only_the_api_and_grafana_are_published_and_on_localhost_unless_told(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"gateway", "grafana"}
    for ports in published.values():
        assert all(p.startswith("${WARD_BIND:-127.0.0.1}:") for p in ports)


def test_workers_and_stores_sit_on_internal_networks_shared_only_with_the_gateway(compose):
    networks = compose["networks"]
    members = {net: {n for n, s in compose["services"].items() if net in s.get("networks", [])} for net in networks}
    assert members["serving"] == {"gateway", "worker"} and networks["serving"]["internal"] is True
    assert members["stores"] == {"gateway", "postgres", "redis"} and networks["stores"]["internal"] is True
    assert members["monitoring"] == {"gateway", "prometheus", "grafana"} and networks["monitoring"]["internal"] is True
    assert compose["services"]["worker"]["networks"] == ["serving"]
    worker = compose["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert any(v.endswith(":/models:ro") for v in worker["volumes"])  # weights mounted, read-only
    # the card's tuned plans: a folder of this directory, read-only, where the worker looks for them
    assert "./tuned-configs:/etc/ward/tuned-configs:ro" in worker["volumes"]
    assert worker["environment"]["WARD_TUNED_CONFIG_FOLDER"] == "/etc/ward/tuned-configs"
    assert (COMPOSE_DIR / "tuned-configs").is_dir()


def test_the_gateway_config_is_a_valid_ward_config_routing_to_the_workers_through_dns(compose, monkeypatch):
    models_env = compose["services"]["gateway"]["environment"]["WARD_MODELS"]
    monkeypatch.setenv("WARD_MODELS", models_env.replace("${WARD_MODEL:?set WARD_MODEL in .env}", "llama-3.1-8b-instruct"))
    settings = GatewaySettings.load(COMPOSE_DIR / "gateway.yaml")
    assert settings.models["llama-3.1-8b-instruct"].dns == ["worker:50051"]
    command = compose["services"]["worker"]["command"]
    assert command[command.index("--port") + 1] == "50051"
    assert settings.auth.tls is not None and settings.audit.default_capture_level == "metadata"
    mounted = {c["target"] for c in compose["services"]["gateway"]["configs"]}
    mounted |= {s["target"] for s in compose["services"]["gateway"]["secrets"]}
    for path in (settings.auth.tls.cert_file, settings.auth.tls.key_file, settings.audit.signing_key_path,
                 str(settings.quota.config_file)):
        assert path in mounted, f"{path} is not mounted into the gateway"
    assert load_quota_config(COMPOSE_DIR / "quotas.yaml") is not None


def _seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(s|m)", duration).groups()
    return float(value) * (60 if unit == "m" else 1)


def test_docker_waits_for_the_gateway_and_the_worker_to_drain_before_killing_them(compose):
    # Docker sends SIGKILL stop_grace_period (default 10 s) after SIGTERM: the gateway's drain and the
    # time it takes to end and audit what is left, and the worker's drain, must fit.
    from gateway.http.server import CUT_SETTLE_S

    settings = GatewaySettings.load(COMPOSE_DIR / "gateway.yaml", models={"m": {"workers": ["worker:50051"]}})
    gateway = compose["services"]["gateway"]
    assert _seconds(gateway.get("stop_grace_period", "10s")) >= settings.shutdown.grace_s + CUT_SETTLE_S + 5
    worker = compose["services"]["worker"]
    drain = float(worker["command"][worker["command"].index("--shutdown-timeout") + 1])
    assert _seconds(worker["stop_grace_period"]) >= drain + 10


def test_every_file_the_stack_mounts_is_in_the_repository_and_wired_to_its_service(compose):
    for name, config in compose["configs"].items():
        path = config["file"].replace("${WARD_QUOTAS_FILE:-./quotas.yaml}", "./quotas.yaml")
        assert (COMPOSE_DIR / path).resolve().is_file(), f"config {name}: {path} is missing"
    for secret in compose["secrets"].values():  # the operator's own keys: never in the repository
        assert secret["file"].startswith("./secrets/")
    assert (COMPOSE_DIR / "secrets" / ".gitignore").read_text().splitlines()[1:] == ["*", "!.gitignore"]
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    prometheus_mounts = {c["target"] for c in compose["services"]["prometheus"]["configs"]}
    assert set(prometheus["rule_files"]) <= prometheus_mounts
    (scrape,) = prometheus["scrape_configs"]
    assert scrape["static_configs"][0]["targets"] == ["gateway:8000"] and scrape["scheme"] == "https"
    grafana_mounts = {c["source"]: c["target"] for c in compose["services"]["grafana"]["configs"]}
    provider = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "ward.yaml").read_text())
    assert pathlib.PurePosixPath(grafana_mounts["ward-dashboard"]).parent == pathlib.PurePosixPath(provider["providers"][0]["options"]["path"])
    datasource = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "ward.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((COMPOSE_DIR / compose["configs"]["ward-dashboard"]["file"]).read_text())
    assert dashboard["uid"] == "ward-overview"


def test_the_documented_ward_commands_in_the_gateway_container_sign_with_the_audit_key_the_gateway_uses(compose, tmp_path):
    # docs/operations.md has the operator make the first admin with `docker compose exec gateway ward ...`:
    # the commands must sign the audit log with the gateway's key (the secret), not make up their own.
    from gateway.audit.signing import Signer, public_pem

    gateway = compose["services"]["gateway"]
    root = tmp_path / "container"
    image_env = dict(re.findall(r"(WARD_DATA_DIR)=(\S+)", (ROOT / "deploy" / "images" / "gateway.Dockerfile").read_text()))
    data_dir = image_env["WARD_DATA_DIR"]
    assert any(v.endswith(f":{data_dir}") for v in gateway["volumes"])  # a volume, kept across restarts
    (key_target,) = [s["target"] for s in gateway["secrets"] if s["source"] == "audit-signing-key"]
    key = root / key_target.lstrip("/")
    key.parent.mkdir(parents=True)
    Signer.load_or_create(key)
    settings = yaml.safe_load((COMPOSE_DIR / "gateway.yaml").read_text())
    assert settings["audit"]["signing_key_path"] == key_target
    env = {**os.environ, "WARD_DATA_DIR": str(root / data_dir.lstrip("/")), "WARD_DATABASE_URL": f"sqlite:///{tmp_path / 'ward.db'}"}
    guide = (ROOT / "docs" / "operations.md").read_text()
    commands = re.findall(r"docker compose exec gateway ward ([^>`\n#]+)", guide)
    assert len(commands) >= 2
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "ward", *shlex.split(command)], capture_output=True, text=True,
                              timeout=120, env=env)
        assert done.returncode == 0, f"ward {command}: {done.stderr}"
    public_key = tmp_path / "checkpoint-key.pub.pem"
    public_key.write_text(public_pem(Signer.load(key).public_key))
    done = subprocess.run([sys.executable, "-m", "ward", "audit", "verify", "--public-key", str(public_key)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
