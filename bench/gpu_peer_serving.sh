#!/usr/bin/env bash
# On a GPU machine: vLLM 0.26.0's OpenAI server (the peer) under the shared streaming load, then Ward's
# governed stack under the same load, back to back on the same card. The peer's site was unpacked into
# $STASH/vllm-site by bench/peer_and_ward.sh (or is unpacked here from $STASH/part00 and
# .peer/vllm/part01); the server's extra wheels are at .peer/srvwhl (vllm-peer-server.sh).
set -u
STASH=${STASH:-${TMPDIR:-/tmp}/ward-stash}
OUT=${OUT:-$PWD/bench-out}
SITE=$STASH/vllm-site
LEVELS=${LEVELS:-1 64 256}
mkdir -p "$SITE" "$OUT"
[ -d "$SITE/vllm" ] || cat "$STASH/part00" .peer/vllm/part01 | xz -d | tar -x -C "$SITE"
python3 -m pip install -q --no-deps --target "$SITE" .peer/srvwhl/*.whl 2>&1 | grep -v "already exists" | tail -2
M=$STASH/llama8b
PYTHONPATH=$PWD python3 -c "from ward.benchmarks.models import write_config_dir as w; w('llama-3.1-8b', '$M')"
python3 .peer/dummy_tokenizer.py "$M" 128256
PYTHONPATH=$SITE VLLM_USE_FLASHINFER_SAMPLER=0 timeout 300 python3 -m vllm.entrypoints.cli.main serve "$M" \
  --load-format dummy --dtype bfloat16 --max-model-len 4096 --port 8011 --served-model-name llama8b \
  > "$OUT/vllm-server.log" 2>&1 &
server=$!
up() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8011/health', timeout=2)" 2>/dev/null; }
for _ in $(seq 240); do up && break; sleep 1; done
up || { tail -30 "$OUT/vllm-server.log"; kill $server; exit 1; }
echo "peer server ready after $SECONDS s"
timeout 150 python3 .peer/serving_load.py http://127.0.0.1:8011 llama8b --concurrency $LEVELS \
  --json "$OUT/vllm-serving.json" | sed 's/^/vllm /'
kill $server; wait $server 2>/dev/null
start=$SECONDS
env WARD_ROUTING__MULTIPLEX=${MULTIPLEX:-true} OUT="$OUT/ward" LEVELS="$LEVELS" timeout 170 bash bench/gpu_serving.sh \
  > "$OUT/ward-serving.txt" 2>&1
echo "ward serving ($((SECONDS - start)) s):"; python3 bench/level_summary.py < "$OUT/ward-serving.txt"
