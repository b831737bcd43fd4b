"""The gateway's Prometheus metrics, named ``ward_gateway_*`` after vLLM's serving metrics.

| Ward (gateway)                                   | vLLM                                  |
| ------------------------------------------------ | ------------------------------------- |
| ward_gateway_requests_total{route,model_name,status} | vllm:request_success_total (by finish) |
| ward_gateway_e2e_request_latency_seconds         | vllm:e2e_request_latency_seconds      |
| ward_gateway_time_to_first_token_seconds         | vllm:time_to_first_token_seconds      |
| ward_gateway_inter_token_latency_seconds         | vllm:inter_token_latency_seconds      |
| ward_gateway_prompt_tokens_total                 | vllm:prompt_tokens_total              |
| ward_gateway_generation_tokens_total             | vllm:generation_tokens_total          |

Latencies are measured at the gateway (they include the gateway and the network to the worker).
Each app owns its registry, so several apps can live in one process (tests). The other layers add
their collectors to it (``gateway.governance``): the quotas (``ward_quota_*``) and the audit writer
(``ward_audit_write_latency_seconds``, ``ward_audit_write_failures_total``, ``ward_audit_spool_pending``;
gateway/audit/metrics.py); /metrics then relays every worker's metrics (gateway/workers/metrics_relay.py).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.http.request_context import RequestContext

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
)
E2E_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


def counted_route(route: str) -> bool:
    """Whether ``ward_gateway_requests_total`` and the latency series count a request to ``route``."""
    return route.startswith("/v1/") or route == "unmatched"


class GatewayMetrics:
    """Counters and histograms the serving code updates once per request (inter-token per message)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ward_gateway_requests",
            "Requests by route, model and HTTP status.",
            ["route", "model_name", "status"],
            registry=r,
        )
        self.e2e_latency = Histogram(
            "ward_gateway_e2e_request_latency_seconds",
            "Request latency from arrival to the last byte.",
            ["route", "model_name"],
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ward_gateway_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            ["model_name"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        # The same, per team: how a team's first tokens fare beside the others' load (tenancy).
        self.team_ttft = Histogram(
            "ward_gateway_team_time_to_first_token_seconds",
            "Time from arrival to the first generated token, per team.",
            ["model_name", "team"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "ward_gateway_inter_token_latency_seconds",
            "Time between successive token deliveries of a request.",
            ["model_name"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "ward_gateway_prompt_tokens", "Prompt tokens processed.", ["model_name"], registry=r
        )
        self.generation_tokens = Counter(
            "ward_gateway_generation_tokens", "Tokens generated.", ["model_name"], registry=r
        )
        self.in_flight = Gauge("ward_gateway_requests_in_flight", "Inference requests being served.", registry=r)
        self._children: dict[tuple, Any] = {}

    def _child(self, metric, *labels: str):
        # labels() takes a lock and builds a key each call; the label sets are few, so keep them.
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_inter_token(self, model: str, seconds: float) -> None:
        self._child(self.inter_token, model).observe(seconds)

    def observe_request(self, ctx: RequestContext, model_label: str) -> None:
        """Records a finished request; ``model_label`` must be a configured model name or "".

        Only the OpenAI API's routes (and paths no route serves) are counted: the admin, audit and
        console routes answer their successes outside the request lifecycle, so counting their
        failures alone would read as a 100% error rate (their failures are in the audit log)."""
        route = ctx.endpoint
        if not counted_route(route):
            return
        self._child(self.requests, route, model_label, str(ctx.status_code or 500)).inc()
        self._child(self.e2e_latency, route, model_label).observe(time.perf_counter() - ctx.received_mono)
        if not model_label:
            return
        if ctx.first_token_mono is not None:
            ttft = ctx.first_token_mono - ctx.received_mono
            self._child(self.ttft, model_label).observe(ttft)
            if ctx.principal is not None and ctx.principal.team:
                self._child(self.team_ttft, model_label, ctx.principal.team).observe(ttft)
        if ctx.prompt_tokens:
            self._child(self.prompt_tokens, model_label).inc(ctx.prompt_tokens)
        if ctx.completion_tokens:
            self._child(self.generation_tokens, model_label).inc(ctx.completion_tokens)


class WorkerPoolCollector(Collector):
    """Per-worker readiness, restarts seen and this gateway's in-flight requests, read from the pool
    at scrape time."""

    def __init__(self, pool) -> None:
        self._pool = pool

    def collect(self):
        ready = GaugeMetricFamily(
            "ward_gateway_worker_ready", "1 if the worker is in rotation.", labels=["model_name", "worker"]
        )
        in_flight = GaugeMetricFamily(
            "ward_gateway_worker_requests_in_flight",
            "This gateway's requests on the worker.",
            labels=["model_name", "worker"],
        )
        restarts = CounterMetricFamily(
            "ward_gateway_worker_restarts",
            "Times another worker process came up at the worker's address (a new worker_id), since this "
            "gateway started.",
            labels=["model_name", "worker"],
        )
        # One series per configured model, also when it has no worker at all (DNS found none yet):
        # what a "model unavailable" alert needs, where the per-worker series simply vanish.
        model_ready = GaugeMetricFamily(
            "ward_gateway_model_ready_workers", "Workers of the model in rotation now.", labels=["model_name"]
        )
        for handle in self._pool.handles():
            ready.add_metric([handle.model, handle.address], 1.0 if handle.ready else 0.0)
            in_flight.add_metric([handle.model, handle.address], float(handle.in_flight))
            restarts.add_metric([handle.model, handle.address], float(handle.restarts))
        for model in self._pool.models():
            model_ready.add_metric([model], float(sum(h.ready for h in self._pool.handles(model))))
        yield ready
        yield in_flight
        yield restarts
        yield model_ready
