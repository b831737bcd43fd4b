"""Prints the serving benchmark's per-level JSON lines (read from stdin) with only the figures a
GPU run's short output has room for, the engine's, the worker's and the gateway's own TTFT and the worker's collector included."""
import json
import sys

FIELDS = ("concurrency", "errors", "out_tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "itl_p50_ms",
          "itl_p99_ms", "engine_ttft_mean_ms", "engine_queue_mean_ms", "engine_prefill_mean_ms",
          "worker_first_response_mean_ms", "gateway_ttft_mean_ms", "worker_gc_paused_ms", "worker_gc_full_collections")

for line in sys.stdin:
    if line.startswith('{"concurrency'):
        level = json.loads(line)
        print(json.dumps({k: level[k] for k in FIELDS if k in level}))
