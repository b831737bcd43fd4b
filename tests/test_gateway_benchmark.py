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


def test_the_litellm_peer_gets_a_mock_model_and_the_master_key_from_the_environment(tmp_path, monkeypatch):
    import yaml

    from ward.benchmarks.gateway.peer import LITELLM_VERSION, litellm_command

    root = tmp_path / "litellm"
    (root / "bin").mkdir(parents=True)
    (root / f".installed-{LITELLM_VERSION}").touch()  # installed: nothing is fetched
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-from-the-environment")
    argv, env, key = litellm_command("bench-model", 4123, tmp_path, root)
    config = yaml.safe_load((tmp_path / "litellm.yaml").read_text())
    assert config["model_list"] == [{"model_name": "bench-model",
                                     "litellm_params": {"model": "openai/bench-model", "mock_response": "ok"}}]
    assert config["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert key == env["LITELLM_MASTER_KEY"] == "sk-from-the-environment"
    assert argv[0] == str(root.resolve() / "bin" / "litellm") and argv[argv.index("--port") + 1] == "4123"


def test_the_ratio_is_taken_from_litellm_measured_in_the_same_run():
    from ward.benchmarks.gateway.overhead import Row, _configs

    rows = [Row("litellm", 1, 100, 50.0, 20.0, 30.0, 5.0), Row("on", 1, 100, 500.0, 2.0, 3.0, 1.0)]
    assert format_table(rows).splitlines()[2].split()[-1] == "10.0"
    with _configs(None, None, peer="litellm", baseline_tree=".") as configs:
        names = [c.name for c in configs]
        before = configs[names.index("on, before")]
    assert names == ["litellm", "off", "on, before", "on", "on, no token limit"]
    assert before.cwd == before.env["PYTHONPATH"] and not any(k.startswith("WARD_") for k in before.env)


def test_with_redis_postgres_and_a_baseline_the_production_layout_is_measured_before_and_after_too():
    from test_audit_support import PG_SERVER_URL

    from ward.benchmarks.gateway.overhead import _configs

    with _configs("redis://127.0.0.1:6379/6", PG_SERVER_URL, baseline_tree=".") as configs:
        by_name = {c.name: c for c in configs}
        before, after = by_name["on, Redis + PostgreSQL, before"], by_name["on, Redis + PostgreSQL"]
        assert list(by_name)[-2:] == ["on, Redis + PostgreSQL, before", "on, Redis + PostgreSQL"]
        assert before.database_url == after.database_url and before.database_url.startswith("postgresql")
        assert before.env["PYTHONPATH"] == before.cwd and "PYTHONPATH" not in after.env
        assert before.env["WARD_REDIS_URL"] == after.env["WARD_REDIS_URL"] == "redis://127.0.0.1:6379/6"


def test_a_run_deletes_only_its_own_quota_keys_from_redis():
    import redis

    from ward.benchmarks.gateway.overhead import BENCH_KEYS, _delete_bench_keys

    url = "redis://127.0.0.1:6379/6"
    client = redis.Redis.from_url(url)
    ours, theirs = f"{BENCH_KEYS}:run-a", f"{BENCH_KEYS}:run-b"
    try:
        client.set(f"{ours}:gw1:team:bench", 1)
        client.set(f"{ours}:gw2:key:bench", 1)
        client.set(f"{theirs}:gw1:team:bench", 1)  # a run beside this one, on the same server
        _delete_bench_keys(url, ours)
        assert not list(client.scan_iter(match=f"{ours}:*"))
        assert client.get(f"{theirs}:gw1:team:bench") == b"1"
    finally:
        client.delete(f"{ours}:gw1:team:bench", f"{ours}:gw2:key:bench", f"{theirs}:gw1:team:bench")
        client.close()
