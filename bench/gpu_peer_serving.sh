#!/usr/bin/env bash
# On a GPU machine: vLLM 0.26.0's OpenAI server (the peer) under the shared streaming load, then Ward's
# governed stack under the same load, back to back on the same card. The peer's site was unpacked into
# $STASH/vllm-site by bench/peer_and_ward.sh (or is unpacked here from $STASH/part00 and
# .peer/vllm/part01); the server's extra wheels are at .peer/server-wheels (vllm-peer-server.sh).
set -u
# FIRST_STREAM=1 (the default): Ward's governed stack also runs one stream before the peer starts, so
# the one-stream level is measured in turns (Ward, the peer, Ward): Ward's own levels come after the
# peer's 256 streams, where its first tokens ran slower once (2026-12-06: engine prefill 57.7 ms there
# against 29-31 ms in turns on the same card). FIRST_STREAM=0 skips it.
STASH=${STASH:-${TMPDIR:-/tmp}/ward-stash}
OUT=${OUT:-$PWD/bench-out}
LEVELS=${LEVELS:-1 64 256}
if [ "${FIRST_STREAM:-1}" = 1 ]; then
  env WARD_ROUTING__MULTIPLEX=${MULTIPLEX:-true} OUT="$OUT/ward-first" LEVELS=1 timeout 120 bash bench/gpu_serving.sh \
    > "$OUT/ward-first-stream.txt" 2>&1
  echo "ward, one stream before the peer:"; python3 bench/level_summary.py < "$OUT/ward-first-stream.txt"
fi
. bench/peer_server.sh
peer_server_start .peer/server-wheels .peer/dummy_tokenizer.py || exit 1
echo "peer server ready after $SECONDS s"
timeout 150 python3 .peer/serving_load.py http://127.0.0.1:8011 llama8b --concurrency $LEVELS \
  --json "$OUT/vllm-serving.json" | sed 's/^/vllm /'
kill $PEER_PID; wait $PEER_PID 2>/dev/null
start=$SECONDS
env WARD_ROUTING__MULTIPLEX=${MULTIPLEX:-true} OUT="$OUT/ward" LEVELS="$LEVELS" timeout 170 bash bench/gpu_serving.sh \
  > "$OUT/ward-serving.txt" 2>&1
echo "ward serving ($((SECONDS - start)) s):"; python3 bench/level_summary.py < "$OUT/ward-serving.txt"
