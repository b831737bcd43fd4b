"""Prometheus metrics of a worker, named under ``ward_`` with vLLM's meanings
(ward_num_requests_running ~ vllm:num_requests_running, and so on), served on their own port
(``--metrics-port``) and through the ``Metrics`` RPC, which gateways relay on their own /metrics."""
from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from worker.engine.llm_engine import EngineStats
from worker.outputs import RequestMetrics, RequestOutput
from worker.server.admission import Admission

_LATENCY = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.2, 0.4, 1.0, 2.5)


class _AdmissionCollector:
    """The admission queue and its refusals, read at scrape time."""

    def __init__(self, admission: Admission, model: str) -> None:
        self._admission, self._model = admission, model

    def collect(self):
        a = self._admission
        refusals = CounterMetricFamily("ward_admission_refusals", "Requests refused by admission control, by reason.",
                                       labels=["model_name", "reason"])
        for reason, count in sorted(a.refusals.items()):
            refusals.add_metric([self._model, reason], count)
        yield refusals
        queue = GaugeMetricFamily("ward_admission_queue_requests",
                                  "Admitted requests not yet producing output (tokenizing, waiting, prefilling).",
                                  labels=["model_name"])
        queue.add_metric([self._model], a.requests)
        yield queue


class _EngineCollector:
    """Reads engine gauges at scrape time (no polling thread, no stale values)."""

    def __init__(self, stats: Callable[[], EngineStats], model: str) -> None:
        self._stats, self._model = stats, model

    def collect(self):
        s = self._stats()
        labels = ["model_name"]
        yield from self._teams(s)

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([self._model], value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric([self._model], value)
            return c

        yield gauge("ward_num_requests_running", "Requests in the running batch.", s.num_running)
        yield gauge("ward_num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting)
        yield gauge("ward_kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).", s.kv_usage)
        yield gauge("ward_kv_cache_waste_perc", "1 - live tokens / allocated KV slots, now (0-1).", s.kv_waste)
        yield gauge("ward_prefix_cache_hit_rate", "Prefix-cache hit rate in tokens since start (0-1).",
                    s.prefix_cache_hit_rate)
        yield counter("ward_prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries)
        yield counter("ward_prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)
        yield counter("ward_num_preemptions", "Requests preempted (recomputed later) since start.", s.num_preemptions)
        yield counter("ward_num_reserve_waits",
                      "Steps whose admissions stopped to keep KV room for the running requests, since start.",
                      s.num_reserve_waits)
        yield gauge("ward_num_waiting_prompt_tokens", "Tokens of the requests waiting to be scheduled.",
                    s.num_waiting_prompt_tokens)

    def _teams(self, s: EngineStats):
        labels = ["model_name", "team"]
        waiting = GaugeMetricFamily("ward_team_num_requests_waiting", "Requests waiting, per team.", labels=labels)
        running = GaugeMetricFamily("ward_team_num_requests_running", "Requests running, per team.", labels=labels)
        served = CounterMetricFamily("ward_team_served_tokens",
                                     "Weighted tokens served per team (prefill x1, decode x2): fair share's input.",
                                     labels=labels)
        for team, t in sorted(s.teams.items()):
            key = [self._model, team or "default"]
            waiting.add_metric(key, t.num_waiting)
            running.add_metric(key, t.num_running)
            served.add_metric(key, t.served_tokens)
        yield waiting
        yield running
        yield served


class WorkerMetrics:
    def __init__(self, stats: Callable[[], EngineStats] | None, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        if stats is not None:  # embedding workers have no engine
            self.registry.register(_EngineCollector(stats, model))
        r, lbl = self.registry, ["model_name"]
        self.prompt_tokens = Counter("ward_prompt_tokens", "Prompt tokens processed.", lbl, registry=r)
        self.generation_tokens = Counter("ward_generation_tokens", "Tokens generated.", lbl, registry=r)
        self.request_success = Counter("ward_request_success", "Finished requests by finish reason.",
                                       lbl + ["finished_reason"], registry=r)
        self.ttft = Histogram("ward_time_to_first_token_seconds", "Time to first token.", lbl, buckets=_LATENCY, registry=r)
        self.itl = Histogram("ward_inter_token_latency_seconds", "Time between tokens.", lbl, buckets=_ITL, registry=r)
        self.e2e = Histogram("ward_e2e_request_latency_seconds", "Arrival to last token.", lbl, buckets=_LATENCY, registry=r)
        self.queue = Histogram("ward_request_queue_time_seconds", "Arrival to first scheduled (waiting).", lbl,
                               buckets=_LATENCY, registry=r)
        self.prefill = Histogram("ward_request_prefill_time_seconds", "First scheduled to first token (prefill).", lbl,
                                 buckets=_LATENCY, registry=r)
        # Per team, where a request's first token went: the whole worker (the Generate call's arrival
        # to its first output handed to gRPC: admission, tokenizing, the engine and the output path),
        # and inside it the engine's queue and time to first token. A team's first token that is slow
        # while its engine times are short waited in the worker's event loop, not in the scheduler.
        tl = ["model_name", "team"]
        self.team_first_response = Histogram(
            "ward_team_first_response_seconds", "A Generate call's arrival to its first output handed to gRPC, per team.",
            tl, buckets=_LATENCY, registry=r)
        self.team_queue = Histogram("ward_team_queue_time_seconds", "Engine arrival to first scheduled, per team.",
                                    tl, buckets=_LATENCY, registry=r)
        self.team_ttft = Histogram("ward_team_time_to_first_token_seconds",
                                   "Engine arrival to first token, per team.", tl, buckets=_LATENCY, registry=r)

    def observe_finished(self, out: RequestOutput) -> None:
        m = self.model
        self.prompt_tokens.labels(m).inc(len(out.prompt_token_ids))
        self.generation_tokens.labels(m).inc(out.num_generated_tokens)
        for c in out.outputs:
            self.request_success.labels(m, c.finish_reason or "abort").inc()
        if out.metrics is not None:
            if out.metrics.time_to_first_token is not None:
                self.ttft.labels(m).observe(out.metrics.time_to_first_token)
            for x in out.metrics.inter_token_latencies:
                self.itl.labels(m).observe(x)
            scheduled, first = out.metrics.first_scheduled_time, out.metrics.first_token_time
            if scheduled is not None:
                self.queue.labels(m).observe(max(0.0, scheduled - out.metrics.arrival_time))
                if first is not None:
                    self.prefill.labels(m).observe(max(0.0, first - scheduled))
            end = out.metrics.last_token_time or time.monotonic()
            self.e2e.labels(m).observe(max(0.0, end - out.metrics.arrival_time))

    def observe_team_request(self, team: str, first_response_s: float, metrics: RequestMetrics | None) -> None:
        """A finished generation of ``team`` ("" for none): its first-response time and engine timings."""
        key = (self.model, team or "default")
        self.team_first_response.labels(*key).observe(max(0.0, first_response_s))
        if metrics is None:
            return
        if metrics.first_scheduled_time is not None:
            self.team_queue.labels(*key).observe(max(0.0, metrics.first_scheduled_time - metrics.arrival_time))
        if metrics.first_token_time is not None:
            self.team_ttft.labels(*key).observe(max(0.0, metrics.first_token_time - metrics.arrival_time))

    def watch_gc(self) -> None:
        """Record the serving process's garbage-collection pauses (worker/gc_heap.py): once per process."""
        from worker.gc_heap import GcPauses

        self.gc_pauses = GcPauses(self.registry)

    def watch_admission(self, admission: Admission) -> None:
        self.registry.register(_AdmissionCollector(admission, self.model))

    def text(self) -> str:
        """The exposition, as /metrics serves it."""
        return generate_latest(self.registry).decode()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
