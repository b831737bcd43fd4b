"""Every metric the Grafana dashboard and the alert rules query exists on a running stack's /metrics:
``ward up`` (gateway with TLS, a generation and an embedding worker) serves some traffic, then its
/metrics is read and each queried name looked up. Each alert has its runbook in docs/operations.md."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from deploy_support import ROOT, alert_rules, dashboard_expressions, markdown_anchors, promql_metric_names
from e2e_support import EMBED_MODEL, GENERATE_MODEL
from prometheus_client.parser import text_string_to_metric_families
from test_e2e_up import ADMIN_LINE, KEY_LINE, WardUp

from auth_tls_certs import TestPKI

# Metrics that other work adds to Ward (the dashboard shows them once it lands): name -> what adds it.
PENDING: dict[str, str] = {}


def queried_metrics() -> set[str]:
    names: set[str] = set()
    for expr in [rule["expr"] for rule in alert_rules()] + dashboard_expressions():
        names |= promql_metric_names(expr)
    return names


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition offers, also for families that have no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, [""]))
    return names


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict:
    """A running ``ward up`` after some traffic: its /metrics text and the certificate's expiry."""
    tmp = tmp_path_factory.mktemp("observability")
    pki = TestPKI(tmp / "pki")
    up = WardUp(tmp / "data", "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    try:
        banner = up.wait_up(timeout_s=300)
        key, admin_key = KEY_LINE.search(banner).group(1), ADMIN_LINE.search(banner).group(1)
        base = f"https://127.0.0.1:{up.port}"
        with httpx.Client(base_url=base, verify=str(pki.ca.ca_file), timeout=120) as client:
            user = {"authorization": f"Bearer {key}"}
            chat = {"model": GENERATE_MODEL, "max_tokens": 8, "stream": True,
                    "messages": [{"role": "user", "content": "Say hello to the ward."}]}
            for _ in range(2):
                with client.stream("POST", "/v1/chat/completions", json=chat, headers=user) as answer:
                    assert answer.status_code == 200 and "[DONE]" in answer.read().decode()
            assert client.post("/v1/embeddings", json={"model": EMBED_MODEL, "input": "chest pain"}, headers=user).status_code == 200
            assert client.get("/v1/models", headers={"authorization": "Bearer ward-0000000000000000.wrong"}).status_code == 401
            # One request a minute: the second is refused by the quota (a 429 with its team and limit).
            admin = {"authorization": f"Bearer {admin_key}"}
            assert client.put("/admin/teams/default/quotas", json={"requests_per_minute": 1}, headers=admin).status_code == 200
            time.sleep(2.5)  # limits set through the API reach the gateway within override_refresh_s
            refused = [client.post("/v1/chat/completions", json={**chat, "stream": False}, headers=user).status_code
                       for _ in range(3)]
            assert 429 in refused, refused
            metrics = client.get("/metrics")
            assert metrics.status_code == 200
        return {"text": metrics.text, "expiry": pki.server.cert}
    finally:
        up.kill()


@pytest.mark.slow
@pytest.mark.parametrize(
    "metric",
    [pytest.param(m, marks=pytest.mark.xfail(reason=f"added by {PENDING[m]}", strict=False)) if m in PENDING else m
     for m in sorted(queried_metrics())],
)
def test_every_metric_the_dashboard_and_alerts_query_is_on_a_running_stack(stack, metric):
    assert metric in exposed_names(stack["text"]), f"{metric} is queried but not on /metrics"


@pytest.mark.slow
def test_the_new_operator_metrics_carry_real_values_on_a_running_stack(stack):
    from cryptography import x509

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(stack["text"])
        for s in family.samples
    }
    assert samples[("ward_audit_write_latency_seconds_count", (("destination", "database"),))] >= 4
    assert samples[("ward_audit_write_failures_total", ())] == 0
    assert samples[("ward_audit_spool_pending", ())] == 0
    for model in (GENERATE_MODEL, EMBED_MODEL):
        assert samples[("ward_gateway_model_ready_workers", (("model_name", model),))] == 1
    expiry = x509.load_pem_x509_certificate(stack["expiry"].read_bytes()).not_valid_after_utc.timestamp()
    assert samples[("ward_tls_certificate_expiry_timestamp_seconds", (("certificate", "server"),))] == expiry


def test_the_queries_name_metrics_ward_defines():
    # Guards the parse itself: a query whose names all vanish would make the test above pass empty.
    names = queried_metrics()
    assert len(names) >= 30
    assert {"ward_gateway_requests_total", "ward_audit_write_latency_seconds_bucket", "ward_kv_cache_usage_perc",
            "ward_tls_certificate_expiry_timestamp_seconds", "ward_quota_degraded"} <= names


def _children(node) -> list:
    import promql_parser

    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    return [getattr(node, a) for a in ("expr", "lhs", "rhs") if getattr(node, a, None) is not None]


def _result_labels(node) -> set[str] | None:
    """The labels the result of a query keeps for sure: its outer aggregation's `by`; None when unknown."""
    import promql_parser

    if isinstance(node, promql_parser.AggregateExpr):
        return set(node.modifier.labels) - {"le"} if node.modifier is not None and str(node.modifier.type).endswith("By") else set()
    for child in _children(node):
        labels = _result_labels(child)
        if labels is not None:
            return labels
    return None


def _parsed(expr: str):
    import promql_parser
    from deploy_support import _GRAFANA_VARIABLES

    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return promql_parser.parse(expr)


def dashboard_targets() -> list[tuple[str, dict]]:
    import json

    dashboard = json.loads((ROOT / "deploy" / "helm" / "ward" / "files" / "ward-dashboard.json").read_text())
    return [(p["title"], t) for p in dashboard["panels"] for t in p.get("targets", ())]


def test_every_dashboard_legend_names_labels_its_query_keeps():
    for title, target in dashboard_targets():
        named = set(re.findall(r"{{\s*(\w+)\s*}}", target.get("legendFormat", "")))
        if named:
            assert named <= (_result_labels(_parsed(target["expr"])) or set()), f"{title}: legend {target['legendFormat']}"


def _summed_worker_series(node, in_sum: bool = False) -> set[str]:
    """Per-worker series (every gateway reports each worker) that a sum or count adds up without a
    `max by (..., worker)` first: with N gateways each worker would count N times."""
    import promql_parser

    if isinstance(node, promql_parser.VectorSelector):
        per_worker = node.name.startswith("ward_gateway_worker_") or not node.name.startswith(
            ("ward_gateway_", "ward_audit_", "ward_quota_", "ward_tls_"))  # else the worker's, relayed
        return {node.name} if per_worker and in_sum else set()
    if isinstance(node, promql_parser.AggregateExpr):
        labels = node.modifier.labels if node.modifier is not None else []
        if str(node.op) in ("max", "min", "avg") and "worker" in labels:
            return set()  # one value per worker from here on
        in_sum = in_sum or str(node.op) in ("sum", "count")
    found: set[str] = set()
    for child in _children(node):
        found |= _summed_worker_series(child, in_sum)
    return found


def test_worker_figures_are_taken_once_per_worker_never_summed_across_gateways():
    queries = [(r["alert"], r["expr"]) for r in alert_rules()] + [(title, t["expr"]) for title, t in dashboard_targets()]
    for where, expr in queries:
        assert not _summed_worker_series(_parsed(expr)), f"{where}: {expr}"


def test_every_alert_has_a_runbook_section_in_the_operations_guide():
    anchors = markdown_anchors((ROOT / "docs" / "operations.md").read_text())
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "WardModelUnavailable", "WardWorkerDown", "WardHighErrorRate", "WardQueueSaturated", "WardKVCacheExhausted",
        "WardAuditWriterFailing", "WardQuotaStoreDown", "WardCertificateExpiringSoon",
    }
    for rule in rules:
        runbook = rule["annotations"]["runbook"]
        page, _, anchor = runbook.partition("#")
        assert page == "docs/operations.md" and anchor == rule["alert"].lower(), runbook
        assert anchor in anchors, f"{rule['alert']}: no section `{anchor}` in docs/operations.md"
        assert rule["labels"]["severity"] in {"warning", "critical"}
