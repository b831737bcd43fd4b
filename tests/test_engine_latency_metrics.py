"""The worker's split of a request's time to first token (waiting, then prefill), its count of
admissions held back for KV room, and how `ward bench serving` reads them per load level."""
from __future__ import annotations

import http.server
import threading

from ward.benchmarks.serving import (engine_means, gateway_ttft_figure, gc_figures, scrape_engine_times, scrape_gateway_ttft,
                                     scrape_gc)
from worker.engine.llm_engine import EngineStats
from worker.outputs import CompletionOutput, RequestMetrics, RequestOutput
from worker.server.metrics import WorkerMetrics


def finished(arrival: float, scheduled: float | None, first: float) -> RequestOutput:
    metrics = RequestMetrics(arrival_time=arrival, first_scheduled_time=scheduled, first_token_time=first,
                             last_token_time=first + 1.0, time_to_first_token=first - arrival)
    return RequestOutput("r", None, [1, 2], [CompletionOutput(0, "x", [3], finish_reason="length")], True,
                         metrics=metrics)


def stats(**overrides) -> EngineStats:
    base = dict(num_running=0, num_waiting=0, kv_blocks_used=0, kv_blocks_total=10, kv_usage=0.0, kv_waste=0.0,
                kv_waste_time_weighted=0.0, prefix_cache_queries=0, prefix_cache_hits=0, prefix_cache_hit_rate=0.0,
                num_preemptions=0, num_steps=0, num_generated_tokens=0, num_tokens_computed=0)
    return EngineStats(**{**base, **overrides})


def serve_text(text: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def scrape_each(scrape, *texts: str) -> list:
    """``scrape`` of each exposition, each served over HTTP as a worker's /metrics would be."""
    servers = [serve_text(text) for text in texts]
    try:
        return [scrape(f"http://127.0.0.1:{server.server_port}/metrics") for server in servers]
    finally:
        for server in servers:
            server.shutdown()


def test_queue_and_prefill_times_split_the_time_to_first_token_and_the_benchmark_reads_their_means():
    m = WorkerMetrics(lambda: stats(num_reserve_waits=3), "model-a")
    empty = m.text()
    m.observe_finished(finished(10.0, 10.5, 10.75))
    m.observe_finished(finished(20.0, 20.25, 21.0))
    m.observe_finished(finished(30.0, None, 30.5))  # never scheduled (aborted while waiting): no split
    m.observe_team_request("a", 0.8, None)  # the Generate call's own first response, per team
    m.observe_team_request("b", 0.6, None)
    text = m.text()
    assert 'ward_num_reserve_waits_total{model_name="model-a"} 3.0' in text
    assert 'ward_request_queue_time_seconds_count{model_name="model-a"} 2.0' in text
    assert 'ward_request_prefill_time_seconds_count{model_name="model-a"} 2.0' in text
    before, after = scrape_each(scrape_engine_times, empty, text)
    assert before == {"engine_ttft": (0.0, 0.0), "engine_queue": (0.0, 0.0), "engine_prefill": (0.0, 0.0),
                      "worker_first_response": (0.0, 0.0)}
    assert engine_means(before, after) == {"engine_ttft_mean_ms": 750.0, "engine_queue_mean_ms": 375.0,
                                           "engine_prefill_mean_ms": 500.0, "worker_first_response_mean_ms": 700.0}
    assert engine_means(after, after) == {}  # nothing finished in between: no figure rather than a zero


def test_the_serving_bench_reads_the_gateways_mean_time_to_first_token_over_every_model():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    ttft = Histogram("ward_gateway_time_to_first_token_seconds", "ttft", ["model_name"], registry=registry)
    empty = generate_latest(registry).decode()
    ttft.labels("model-a").observe(0.030)
    ttft.labels("model-a").observe(0.040)
    ttft.labels("model-b").observe(0.020)
    before, after = scrape_each(scrape_gateway_ttft, empty, generate_latest(registry).decode())
    assert before == (0.0, 0.0) and after[1] == 3.0
    assert gateway_ttft_figure(before, after) == {"gateway_ttft_mean_ms": 30.0}
    assert gateway_ttft_figure(after, after) == {}


def test_each_teams_first_response_and_engine_times_are_kept_apart_and_the_fairness_bench_reads_them():
    from ward.benchmarks.fairness import TEAM_HISTOGRAMS, _team_split
    from ward.benchmarks.worker_metrics import histogram_totals

    m = WorkerMetrics(lambda: stats(), "model-a")
    empty = m.text()
    m.observe_team_request("a", 0.9, finished(10.0, 10.5, 10.75).metrics)
    m.observe_team_request("a", 1.1, finished(20.0, 20.25, 21.0).metrics)
    m.observe_team_request("b", 0.3, finished(30.0, 30.0, 30.1).metrics)
    m.observe_team_request("", 0.2, None)  # no engine timings (e.g. aborted): the first response only
    text = m.text()
    assert 'ward_team_first_response_seconds_count{model_name="model-a",team="a"} 2.0' in text
    assert 'ward_team_first_response_seconds_count{model_name="model-a",team="default"} 1.0' in text
    assert 'ward_team_queue_time_seconds_count{model_name="model-a",team="default"}' not in text
    before_server, after_server = serve_text(empty), serve_text(text)
    try:
        before = histogram_totals(f"http://127.0.0.1:{before_server.server_port}/metrics", TEAM_HISTOGRAMS, "team")
        after = histogram_totals(f"http://127.0.0.1:{after_server.server_port}/metrics", TEAM_HISTOGRAMS, "team")
    finally:
        before_server.shutdown()
        after_server.shutdown()
    assert _team_split(before, after, "a") == {"worker_first_response_mean_ms": 1000.0, "engine_queue_mean_ms": 375.0,
                                               "engine_ttft_mean_ms": 875.0}
    assert _team_split(before, after, "b") == {"worker_first_response_mean_ms": 300.0, "engine_queue_mean_ms": 0.0,
                                               "engine_ttft_mean_ms": 100.0}
    assert _team_split(after, after, "a") == {}  # nothing finished in between: no figure rather than a zero


def test_the_fairness_bench_adds_up_several_gateways_without_counting_the_relayed_worker_twice():
    from ward.benchmarks.fairness import _added, _added_pairs
    from ward.benchmarks.worker_metrics import mean_ms

    first = {"ward_gateway_requests_in_flight": 600.0, "ward_num_requests_running": 249.0}
    second = {"ward_gateway_requests_in_flight": 700.0, "ward_num_requests_running": 249.0}
    assert _added([first, second]) == {"ward_gateway_requests_in_flight": 1300.0, "ward_num_requests_running": 249.0}
    assert _added([]) == {}
    key = ("audit_write", "database")
    before = _added_pairs([{key: (1.0, 100.0)}, {key: (2.0, 100.0)}])
    after = _added_pairs([{key: (1.5, 200.0)}, {key: (3.5, 300.0)}])
    assert mean_ms(before, after, "audit_write", "database") == round(1000 * 2.0 / 300, 2)


def test_one_scrape_of_a_gateway_reads_each_histogram_by_its_own_label():
    from ward.benchmarks.fairness import GATEWAY_HISTOGRAMS, GATEWAY_LABELS
    from ward.benchmarks.worker_metrics import histogram_totals

    text = "\n".join([
        "# TYPE ward_audit_write_latency_seconds histogram",
        'ward_audit_write_latency_seconds_sum{destination="database"} 0.5',
        'ward_audit_write_latency_seconds_count{destination="database"} 100.0',
        "# TYPE ward_gateway_team_time_to_first_token_seconds histogram",
        'ward_gateway_team_time_to_first_token_seconds_sum{model_name="m",team="a"} 3.0',
        'ward_gateway_team_time_to_first_token_seconds_count{model_name="m",team="a"} 4.0',
        'ward_gateway_team_time_to_first_token_seconds_sum{model_name="m",team="b"} 0.25',
        'ward_gateway_team_time_to_first_token_seconds_count{model_name="m",team="b"} 5.0',
        "",
    ])
    server = serve_text(text)
    try:
        totals = histogram_totals(f"http://127.0.0.1:{server.server_port}/metrics", GATEWAY_HISTOGRAMS, GATEWAY_LABELS)
    finally:
        server.shutdown()
    assert totals == {("audit_write", "database"): (0.5, 100.0), ("gateway_ttft", "a"): (3.0, 4.0),
                      ("gateway_ttft", "b"): (0.25, 5.0)}


def test_the_serving_bench_reads_the_workers_collector_pauses_per_level():
    import gc

    from worker.gc_heap import GcPauses

    m = WorkerMetrics(lambda: stats(), "model-a")
    pauses = GcPauses(m.registry)
    try:
        empty = m.text()
        pauses._on_collection("start", {"generation": 2})
        pauses._on_collection("stop", {"generation": 2})
        gc.collect(0)
        text = m.text()
    finally:
        pauses.close()
    before, after = scrape_each(scrape_gc, empty, text)
    assert set(before) == {"0", "1", "2"} and after["2"][1] == before["2"][1] + 1 and after["0"][1] >= before["0"][1] + 1
    figures = gc_figures(before, after)
    assert figures["worker_gc_full_collections"] == 1 and figures["worker_gc_paused_ms"] >= 0
