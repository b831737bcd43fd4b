"""Prints the serving benchmark's per-level JSON lines (read from stdin) with only the figures a
GPU run's short output has room for, the engine's own TTFT split included."""
import json
import sys

FIELDS = ("concurrency", "errors", "out_tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "itl_p50_ms",
          "itl_p99_ms", "engine_ttft_mean_ms", "engine_queue_mean_ms", "engine_prefill_mean_ms")

for line in sys.stdin:
    if line.startswith('{"concurrency'):
        level = json.loads(line)
        print(json.dumps({k: level[k] for k in FIELDS if k in level}))
