#!/usr/bin/env bash
# On a GPU machine: serving through the whole stack (bench/serving_stack.py), with the gateway's
# Python packages installed from wheels copied to .gpu/gw-wheels, plus a few facts about the
# machine that bound a serving run (open-file limit, fsync latency of the data disk).
set -u
S=${GW_SITE:-${TMPDIR:-/tmp}/ward-gateway-site}
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --target "$S" .gpu/gw-wheels/*.whl 2>&1 | tail -1
export PYTHONPATH="$PWD:$S"
echo "open files: $(ulimit -n)"
python3 - <<'PY'
import os, tempfile, time
fd, path = tempfile.mkstemp(); ts = []
for _ in range(50):
    os.write(fd, b"x" * 512); t = time.perf_counter(); os.fsync(fd); ts.append(time.perf_counter() - t)
ts.sort(); print(f"fsync p50 {1000*ts[25]:.2f} ms, p99 {1000*ts[-1]:.2f} ms"); os.remove(path)
PY
# ENGINE_PROCESS=1: the worker's engine core in a process of its own (ward worker --engine-process);
# WORKER_ARGS: more worker arguments (e.g. "--max-num-batched-tokens 2048")
python3 -m ward bench serving --load-tool .peer/serving_load.py --tokenizer-tool .peer/dummy_tokenizer.py \
  --model llama-3.1-8b --device cuda --concurrency ${LEVELS:-1 16 64 256} --out "$OUT/serving" \
  ${ENGINE_PROCESS:+--engine-process} --worker-args "${WORKER_ARGS:-}" > "$OUT/serving.txt" 2>&1
grep -E '^\{"concurrency' "$OUT/serving.txt"
grep -A30 "load tool failed" "$OUT/serving.txt" | tail -30
grep -iE "warning|error" "$OUT/serving/gateway.log" | tail -15
python3 -c "import json; d=json.load(open('$OUT/serving/serving_stack.json')); print({k: d[k] for k in d if k != 'levels'})" | cut -c1-800
