"""The Helm chart (deploy/helm/ward): rendered by helm with values that turn its features on and off,
every manifest validated against the Kubernetes schemas, and a policy: no container runs as root,
every long-running pod has probes and resource limits, workers are reachable only from gateways."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    ALERTS_FILE,
    ROOT,
    DASHBOARD_FILE,
    KUBE_VERSION,
    MODELS,
    REQUIRED_VALUES,
    HelmError,
    by_kind,
    deep_merge,
    one,
    pod_specs,
    promql_metric_names,
    render,
)

from gateway.quota.config_file import load_quota_config
from gateway.settings import GatewaySettings

EVERYTHING_ON = deep_merge(
    REQUIRED_VALUES,
    {
        "models": MODELS,
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
        "quotas": {"file": "teams:\n  radiology:\n    limits:\n      requests_per_minute: 120\n"},
        "tls": {"gateway": {"clientCertificates": "optional"}},
        "gateway": {"config": {"routing": {"dns_refresh_s": 2}, "auth": {"mtls": {"identities": [
            {"subject": "CN=lab-system,O=General Hospital", "team": "laboratory"}]}}}},
    },
)
# A trial: bundled stores, no TLS, no autoscaling, no NetworkPolicy, no monitoring objects.
TRIAL = {
    "models": MODELS[:1],
    "bundled": {"postgresql": {"enabled": True}, "redis": {"enabled": True}},
    "audit": {"signingKey": {"existingSecret": "ward-audit-key"}, "purge": {"enabled": False}},
    "tls": {"gateway": {"enabled": False}, "workers": {"enabled": False}},
    "gateway": {"autoscaling": {"enabled": False}, "replicas": 3},
    "networkPolicy": {"enabled": False},
}
VALUE_SETS = {"everything-on": EVERYTHING_ON, "trial": TRIAL, "trial-with-policies": deep_merge(TRIAL, {"networkPolicy": {"enabled": True}})}
CUSTOM_RESOURCES = {"ServiceMonitor", "PrometheusRule"}  # CRDs: no schema ships with Kubernetes'


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    tmp = tmp_path_factory.mktemp("chart")
    return {name: render(values, tmp) for name, values in VALUE_SETS.items()}


def gateway_config(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", "ward-gateway")["data"]["gateway.yaml"])


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(rendered, value_set):
    docs = rendered[value_set]
    checked = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_RESOURCES:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)  # strict: unknown fields are errors
        checked += 1
    assert checked >= 10


def test_the_validator_rejects_what_kubernetes_would(rendered):
    deployment = copy.deepcopy(one(rendered["everything-on"], "Deployment", "ward-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_container_runs_as_root_and_every_pod_has_probes_and_limits(rendered, value_set):
    workloads = pod_specs(rendered[value_set])
    assert workloads
    for workload, pod in workloads:
        where = f"{workload['kind']} {workload['metadata']['name']}"
        pod_security = pod.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, where
        assert pod_security.get("runAsUser", 0) != 0, where
        assert pod.get("automountServiceAccountToken") is False, where
        for container in pod.get("initContainers", []) + pod["containers"]:
            security = container.get("securityContext", {})
            assert security.get("runAsUser", pod_security["runAsUser"]) != 0, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            limits = container.get("resources", {}).get("limits", {})
            assert "cpu" in limits and "memory" in limits, f"{where}: no CPU and memory limits"
            if workload["kind"] not in ("CronJob", "Job"):  # a batch job has nothing to probe
                assert "livenessProbe" in container and "readinessProbe" in container, f"{where}: probes"


def test_gateways_probe_healthz_and_readyz_and_workers_probe_their_health_rpc(rendered):
    docs = rendered["everything-on"]
    gateway = one(docs, "Deployment", "ward-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTPS"}
    worker = one(docs, "Deployment", "ward-worker-llama-3-1-8b-instruct")["spec"]["template"]["spec"]["containers"][0]
    liveness = worker["livenessProbe"]["exec"]["command"]
    assert liveness[:3] == ["ward-worker-health", "--address", "127.0.0.1:50051"]
    assert "--tls-dir" in liveness and "--ready" not in liveness  # alive: answers; ready: serves
    readiness = worker["readinessProbe"]["exec"]["command"]
    assert readiness[-1] == "--ready" and readiness[:readiness.index("--timeout")] == liveness[:liveness.index("--timeout")]
    # The Health call waits as long as the probe does (less the program's start): a busy worker
    # answering in 6 s is alive for a liveness probe of 10 s, not cut at the program's default 4 s.
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = worker[kind]
        command = probe["exec"]["command"]
        wait = float(command[command.index("--timeout") + 1])
        assert probe["timeoutSeconds"] - 2 <= wait < probe["timeoutSeconds"], kind
    assert worker["startupProbe"]["failureThreshold"] * worker["startupProbe"]["periodSeconds"] >= 600


def test_gateway_runs_at_least_two_replicas_with_an_autoscaler_on_requests_in_flight(rendered):
    docs = rendered["everything-on"]
    hpa = one(docs, "HorizontalPodAutoscaler", "ward-gateway")
    assert hpa["spec"]["minReplicas"] >= 2
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "ward_gateway_requests_in_flight"
    assert "replicas" not in one(docs, "Deployment", "ward-gateway")["spec"]  # the HPA owns it
    assert one(docs, "PodDisruptionBudget", "ward-gateway")["spec"]["minAvailable"] == 1
    # During a quota-store outage each gateway keeps limit / replicas: count the most there can be.
    assert gateway_config(docs)["quota"]["gateway_replicas"] == hpa["spec"]["maxReplicas"]
    trial = rendered["trial"]
    assert by_kind(trial, "HorizontalPodAutoscaler") == []
    assert one(trial, "Deployment", "ward-gateway")["spec"]["replicas"] == 3


@pytest.mark.parametrize("grace_period", [None, 300])
def test_a_stopping_gateway_ends_its_drain_before_kubernetes_kills_it(grace_period, tmp_path):
    # SIGTERM comes after the pre-stop pause; the gateway then drains for shutdown.grace_s, ends what
    # is left and gives those requests CUT_SETTLE_S to send their last bytes and be audited. All of it
    # must fit the grace period, or SIGKILL cuts streams with no error event and no audit entry.
    from gateway.http.server import CUT_SETTLE_S
    from gateway.settings import ShutdownSettings

    values = EVERYTHING_ON if grace_period is None else deep_merge(EVERYTHING_ON, {"gateway": {"terminationGracePeriodSeconds": grace_period}})
    docs = render(values, tmp_path)
    pod = one(docs, "Deployment", "ward-gateway")["spec"]["template"]["spec"]
    pause = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = gateway_config(docs).get("shutdown", {}).get("grace_s", ShutdownSettings().grace_s)
    assert drain >= 10 and pause + drain + CUT_SETTLE_S < pod["terminationGracePeriodSeconds"]
    if grace_period:
        assert drain >= grace_period - 30  # a longer grace period is a longer drain


def test_each_model_gets_a_worker_deployment_with_its_gpus_weights_and_a_headless_service(rendered):
    docs = rendered["everything-on"]
    big = one(docs, "Deployment", "ward-worker-llama-3-1-70b-instruct")
    pod = big["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert big["spec"]["replicas"] == 2
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 2
    args = worker["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--model") + 1] == "/models/llama-3.1-70b-instruct"
    assert args[args.index("--served-model-name") + 1] == "Llama-3.1-70B-Instruct"
    assert args[-2:] == ["--max-model-len", "16384"]
    weights = next(v for v in pod["volumes"] if v["name"] == "weights")
    assert weights["hostPath"] == {"path": "/srv/models", "type": "Directory"}
    assert {"name": "weights", "mountPath": "/models", "readOnly": True} in worker["volumeMounts"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"  # never a download at start
    small = one(docs, "Deployment", "ward-worker-llama-3-1-8b-instruct")["spec"]["template"]["spec"]
    assert "--tensor-parallel-size" not in small["containers"][0]["args"]
    assert small["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    claim = next(v for v in small["volumes"] if v["name"] == "weights")["persistentVolumeClaim"]
    assert claim == {"claimName": "ward-weights", "readOnly": True}
    for model in MODELS:
        name = "ward-worker-" + model["name"].lower().replace(".", "-")
        service = one(docs, "Service", name)
        assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is False
        assert one(docs, "PodDisruptionBudget", name)["spec"]["maxUnavailable"] == 1


def test_the_rendered_gateway_config_is_a_valid_ward_config_that_finds_workers_through_dns(rendered, tmp_path):
    for value_set in VALUE_SETS:
        docs = rendered[value_set]
        path = tmp_path / f"{value_set}.yaml"
        path.write_text(one(docs, "ConfigMap", "ward-gateway")["data"]["gateway.yaml"])
        settings = GatewaySettings.load(path)  # extra="forbid": a misspelt key fails here
        for name, route in settings.models.items():
            assert route.workers == []
            (target,) = route.dns
            service = next(s for s in by_kind(docs, "Service") if target.startswith(s["metadata"]["name"] + ".ward.svc.cluster.local:"))
            assert service["spec"]["clusterIP"] == "None", name
            assert target.endswith(f":{service['spec']['ports'][0]['port']}")
    on = GatewaySettings.load(tmp_path / "everything-on.yaml")
    assert on.auth.tls.client_cert == "optional" and on.auth.worker_tls.server_name == "ward-worker"
    assert on.audit.default_capture_level == "metadata" and on.audit.on_database_outage == "fail_closed"
    assert on.routing.dns_refresh_s == 2 and on.auth.mtls.identities[0].team == "laboratory"  # gateway.config merged
    trial = GatewaySettings.load(tmp_path / "trial.yaml")
    assert trial.auth.tls is None and trial.auth.insecure_worker_channel is True


def test_the_quota_file_is_a_valid_ward_quota_file(rendered, tmp_path):
    path = tmp_path / "quotas.yaml"
    path.write_text(one(rendered["everything-on"], "ConfigMap", "ward-quotas")["data"]["quotas.yaml"])
    config = load_quota_config(path)
    assert config.teams["radiology"].limits.requests_per_minute == 120


def test_a_quota_edit_reaches_the_gateways_in_place_and_a_config_edit_rolls_them(tmp_path):
    def pod_template(extra: dict) -> dict:
        docs = render(deep_merge(EVERYTHING_ON, extra), tmp_path)
        return one(docs, "Deployment", "ward-gateway")["spec"]["template"]

    before = pod_template({})
    quota_edit = pod_template({"quotas": {"file": "teams:\n  radiology:\n    limits:\n      requests_per_minute: 60\n"}})
    assert quota_edit == before  # the mounted file changes and is reloaded: no restart, no stream cut
    config_edit = pod_template({"gateway": {"config": {"routing": {"dns_refresh_s": 3}}}})
    assert config_edit["metadata"]["annotations"]["checksum/config"] != before["metadata"]["annotations"]["checksum/config"]


def test_tls_on_by_default_uses_secrets_for_every_hop(rendered):
    docs = rendered["everything-on"]
    gateway_pod = one(docs, "Deployment", "ward-gateway")["spec"]["template"]["spec"]
    secrets = {v["secret"]["secretName"] for v in gateway_pod["volumes"] if "secret" in v}
    assert secrets == {"ward-gateway-tls", "ward-gateway-client-tls", "ward-audit-key"}
    worker = one(docs, "Deployment", "ward-worker-llama-3-1-8b-instruct")["spec"]["template"]["spec"]
    assert "--insecure" not in worker["containers"][0]["args"]
    assert {"--tls-cert", "--tls-key", "--client-ca"} <= set(worker["containers"][0]["args"])
    env = {e["name"]: e for e in gateway_pod["containers"][0]["env"]}
    assert env["WARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ward-db", "key": "url"}
    assert env["WARD_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ward-redis", "key": "url"}
    trial_worker = one(rendered["trial"], "Deployment", "ward-worker-llama-3-1-8b-instruct")
    assert "--insecure" in trial_worker["spec"]["template"]["spec"]["containers"][0]["args"]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_network_policies_let_only_gateways_reach_workers_and_only_the_ingress_reach_gateways(rendered):
    docs = rendered["everything-on"]
    gateway_labels = one(docs, "Deployment", "ward-gateway")["spec"]["template"]["metadata"]["labels"]
    worker_labels = one(docs, "Deployment", "ward-worker-llama-3-1-8b-instruct")["spec"]["template"]["metadata"]["labels"]
    workers = one(docs, "NetworkPolicy", "ward-worker")["spec"]
    assert _selects(workers["podSelector"], worker_labels) and not _selects(workers["podSelector"], gateway_labels)
    assert set(workers["policyTypes"]) == {"Ingress", "Egress"} and workers["egress"] == []
    (rule,) = workers["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"} and _selects(peer["podSelector"], gateway_labels)
    assert not _selects(peer["podSelector"], worker_labels)
    gateways = one(docs, "NetworkPolicy", "ward-gateway")["spec"]
    assert _selects(gateways["podSelector"], gateway_labels)
    peers = [p for rule in gateways["ingress"] for p in rule["from"]]
    assert peers == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    stores = one(rendered["trial-with-policies"], "NetworkPolicy", "ward-stores")["spec"]
    assert stores["egress"] == [] and stores["ingress"][0]["from"][0]["podSelector"]["matchExpressions"]
    assert by_kind(rendered["trial"], "NetworkPolicy") == []


def test_monitoring_objects_follow_the_values_and_carry_the_shipped_rules_and_dashboard(rendered):
    docs = rendered["everything-on"]
    monitor = one(docs, "ServiceMonitor", "ward-gateway")
    service = one(docs, "Service", "ward-gateway")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "https"
    rule = one(docs, "PrometheusRule", "ward")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == yaml.safe_load(ALERTS_FILE.read_text())
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            assert promql_metric_names(alert["expr"])  # every expression parses as PromQL
    dashboard = one(docs, "ConfigMap", "ward-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["ward.json"]) == json.loads(DASHBOARD_FILE.read_text())
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert by_kind(rendered["trial"], kind) == []


def test_bundled_stores_are_only_for_trials_and_wired_to_the_gateway(rendered):
    assert not [d for d in rendered["everything-on"] if d["metadata"]["name"].endswith(("-postgresql", "-redis"))]
    docs = rendered["trial"]
    one(docs, "StatefulSet", "ward-postgresql")
    one(docs, "Deployment", "ward-redis")
    env = {e["name"]: e for e in one(docs, "Deployment", "ward-gateway")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ward-postgresql", "key": "url"}
    assert env["WARD_REDIS_URL"]["value"] == "redis://ward-redis:6379/0"
    secret = one(docs, "Secret", "ward-postgresql")["stringData"]
    assert len(secret["password"]) == 32 and secret["url"].startswith(f"postgresql://ward:{secret['password']}@ward-postgresql:5432/")


def test_extra_volumes_reach_the_gateway_pod(tmp_path):
    values = deep_merge(REQUIRED_VALUES, {"gateway": {
        "extraVolumes": [{"name": "retired-keys", "secret": {"secretName": "ward-audit-retired"}}],
        "extraVolumeMounts": [{"name": "retired-keys", "mountPath": "/etc/ward/audit-retired", "readOnly": True}],
        "config": {"audit": {"trusted_public_keys": ["/etc/ward/audit-retired/2026.pub.pem"]}}}})
    docs = render(values, tmp_path)
    pod = one(docs, "Deployment", "ward-gateway")["spec"]["template"]["spec"]
    assert {"name": "retired-keys", "secret": {"secretName": "ward-audit-retired"}} in pod["volumes"]
    assert {"name": "retired-keys", "mountPath": "/etc/ward/audit-retired", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert gateway_config(docs)["audit"]["trusted_public_keys"] == ["/etc/ward/audit-retired/2026.pub.pem"]
    kubernetes_validate.validate(one(docs, "Deployment", "ward-gateway"), KUBE_VERSION, strict=True)


def test_workers_read_tuned_kernel_plans_from_a_configmap_when_one_is_named(rendered, tmp_path):
    docs = render(deep_merge(REQUIRED_VALUES, {"models": MODELS, "worker": {"tunedConfigMap": "ward-tuned"}}), tmp_path)
    workers = [d for d in by_kind(docs, "Deployment") if d["spec"]["template"]["spec"]["containers"][0]["name"] == "worker"]
    assert len(workers) == len(MODELS)
    for deployment in workers:
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert {"name": "tuned-configs", "configMap": {"name": "ward-tuned"}} in pod["volumes"]
        assert {"name": "tuned-configs", "mountPath": "/etc/ward/tuned-configs", "readOnly": True} in container["volumeMounts"]
        assert {"name": "WARD_TUNED_CONFIG_FOLDER", "value": "/etc/ward/tuned-configs"} in container["env"]
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    # not named (the default): nothing mounted, the shipped plans
    for deployment in by_kind(rendered["everything-on"], "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert all(e["name"] != "WARD_TUNED_CONFIG_FOLDER" for e in container.get("env", []))


def _pod_filesystem(container: dict, pod: dict, root: pathlib.Path) -> dict[str, str]:
    """Each volume mount of ``container`` as a folder under ``root`` (nested mounts nest); Secret
    volumes hold test stand-ins. Returns the container's environment with its paths under ``root``."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in sorted(container["volumeMounts"], key=lambda m: m["mountPath"]):
        folder = root / mount["mountPath"].lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for item in volumes[mount["name"]].get("secret", {}).get("items", []):
            if item["path"] == "checkpoint-key.pem":
                from gateway.audit.signing import Signer

                Signer.load_or_create(folder / item["path"])  # the key the operator put in the Secret
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return {k: str(root / v.lstrip("/")) if v.startswith("/") else v for k, v in env.items()}


def test_the_documented_ward_commands_in_a_gateway_pod_sign_with_the_audit_key_the_gateways_use(rendered, tmp_path):
    # docs/operations.md has the operator run `ward ...` in a gateway pod (the first admin, backups).
    # They must append to the audit log with the key of the Secret, as the gateways do, and never
    # make up a key of their own: the log would then fail verification from its first entry on.
    docs = rendered["everything-on"]
    pod = one(docs, "Deployment", "ward-gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    root = tmp_path / "pod"
    env = _pod_filesystem(container, pod, root)
    gateway_key = root / gateway_config(docs)["audit"]["signing_key_path"].lstrip("/")
    assert gateway_key.is_file()
    env["WARD_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ward.db'}"
    guide = (ROOT / "docs" / "operations.md").read_text()
    commands = re.findall(r"kubectl -n ward exec deploy/ward-gateway -- ward ([^>`\n#]+)", guide)
    assert len(commands) >= 3
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "ward", *shlex.split(command)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, **env})
        assert done.returncode == 0, f"ward {command}: {done.stderr}"
    public_key = tmp_path / "checkpoint-key.pub.pem"
    from gateway.audit.signing import Signer, public_pem

    public_key.write_text(public_pem(Signer.load(gateway_key).public_key))
    done = subprocess.run([sys.executable, "-m", "ward", "audit", "verify", "--public-key", str(public_key)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_audit_purge_job_runs_ward_audit_purge_with_the_retention(rendered):
    job = one(rendered["everything-on"], "CronJob", "ward-audit-purge")
    container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:4] == ["audit", "purge", "--retention-days", "2192"]
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    assert by_kind(rendered["trial"], "CronJob") == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({k: v for k, v in REQUIRED_VALUES.items() if k != "audit"}, "audit.signingKey.existingSecret is required"),
        ({k: v for k, v in REQUIRED_VALUES.items() if k != "database"}, "database.existingSecret is required"),
        # Without Redis each gateway would keep its own counters: every limit multiplied by the replicas.
        ({k: v for k, v in REQUIRED_VALUES.items() if k != "redis"}, "redis.existingSecret is required"),
        (deep_merge(REQUIRED_VALUES, {"tls": {"gateway": {"existingSecret": ""}}}), "tls.gateway.existingSecret is required"),
        (deep_merge(REQUIRED_VALUES, {"tls": {"workers": {"gatewayClientSecret": ""}}}), "tls.workers.existingSecret and"),
        ({**REQUIRED_VALUES, "models": [{"name": "m", "weights": {}}]}, "model m: weights.persistentVolumeClaim or weights.hostPath is required"),
        ({**REQUIRED_VALUES, "models": [{"name": "m"}]}, "missing property 'weights'"),
        ({**REQUIRED_VALUES, "models": [{"name": n, "weights": {"hostPath": "/m"}} for n in ("Llama.3", "llama-3")]},
         'models "Llama.3" and "llama-3" both become worker-llama-3'),
        ({**REQUIRED_VALUES, "modles": []}, "additional properties 'modles' not allowed"),
        (deep_merge(REQUIRED_VALUES, {"audit": {"defaultCaptureLevel": "everything"}}), "must be one of 'metadata', 'redacted', 'full'"),
        (deep_merge(REQUIRED_VALUES, {"audit": {"onDatabaseOutage": "spool"}}), "onDatabaseOutage"),
        (deep_merge(REQUIRED_VALUES, {"gateway": {"replicas": 1}}), "replicas"),
        (deep_merge(REQUIRED_VALUES, {"gateway": {"terminationGracePeriodSeconds": 20}}),
         "gateway.terminationGracePeriodSeconds must be at least gateway.preStopSleepSeconds \\+ 20 \\(25\\)"),
    ],
    ids=["no-signing-key", "no-database", "no-redis", "no-gateway-cert", "no-gateway-client-cert", "no-weights", "weights-unset", "colliding-names",
         "misspelt-key", "unknown-capture-level", "spool-on-kubernetes", "one-gateway", "no-time-to-drain"],
)
def test_missing_required_values_fail_with_a_clear_message(values, message, tmp_path):
    with pytest.raises(HelmError, match=message):
        render(values, tmp_path)


def _parse(module_name: str, argv: list[str]):
    import argparse
    import importlib

    parser = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module(module_name).add_arguments(parser)
    return parser.parse_args(argv)


def test_the_commands_the_chart_runs_are_commands_ward_accepts(rendered, tmp_path):
    docs = rendered["everything-on"]
    gateway_args = one(docs, "Deployment", "ward-gateway")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert gateway_args[0] == "gateway"
    parsed = _parse("gateway.cli", gateway_args[1:])
    assert str(parsed.config) == "/etc/ward/gateway/gateway.yaml"
    worker_args = one(docs, "Deployment", "ward-worker-llama-3-1-8b-instruct")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert worker_args[0] == "worker"
    worker = _parse("worker.server.cli", worker_args[1:])
    assert (worker.model, worker.served_model_name, worker.host, worker.port) == (
        "/models/llama-3.1-8b-instruct", "llama-3.1-8b-instruct", "0.0.0.0", 50051)
    assert worker.client_ca == "/etc/ward/tls/worker/ca.crt" and worker.shutdown_timeout == 120
    # A tensor-parallel model's worker: the flag the chart adds is one the worker takes.
    big_args = one(docs, "Deployment", "ward-worker-llama-3-1-70b-instruct")["spec"]["template"]["spec"]["containers"][0]["args"]
    big = _parse("worker.server.cli", big_args[1:])
    assert (big.tensor_parallel_size, big.max_model_len) == (2, 16384)
    # The purge job's command, run for real on a database with a log and its key.
    from gateway.audit.signing import Signer
    from gateway.db.engine import upgrade_to_head

    url = f"sqlite:///{tmp_path / 'ward.db'}"
    upgrade_to_head(url)
    key = tmp_path / "checkpoint-key.pem"
    Signer.load_or_create(key)
    job = one(docs, "CronJob", "ward-audit-purge")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = [str(key) if a == "/var/lib/ward/audit/checkpoint-key.pem" else a for a in job["args"]]
    done = subprocess.run([sys.executable, "-m", "ward", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WARD_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    assert "nothing to purge" in done.stdout
