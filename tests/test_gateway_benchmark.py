"""``ward bench gateway`` runs end to end on a small load: every configuration's gateway starts, answers
only 200s through the keep-alive load generator, and reports its figures."""
from __future__ import annotations

from ward.benchmarks.gateway.load import LoadResult
from ward.benchmarks.gateway.overhead import format_table, run_benchmark


def test_the_overhead_benchmark_measures_every_configuration_with_only_successful_answers():
    rows = run_benchmark(requests=40, clients=[1, 4], rounds=1, warmup=32)  # raises on any answer but 200
    assert [(r.config, r.clients) for r in rows] == [
        ("off", 1), ("off", 4), ("on", 1), ("on", 4), ("on, no token limit", 1), ("on, no token limit", 4)]
    assert all(r.requests == 40 * (2 if r.clients > 1 else 1) and r.requests_per_s > 0 for r in rows)
    assert all(0 < r.p50_ms <= r.p99_ms and r.gateway_cpu_ms_per_request >= 0 for r in rows)
    assert "x LiteLLM" in format_table(rows).splitlines()[0]


def test_percentiles_of_a_load_result():
    result = LoadResult(clients=1, requests=4, seconds=2.0, latencies_s=[0.004, 0.001, 0.003, 0.002], statuses={200: 4})
    assert (result.requests_per_s, result.percentile_ms(50), result.percentile_ms(99)) == (2.0, 2.0, 4.0)
