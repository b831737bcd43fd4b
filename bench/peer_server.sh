# Sourced by the peer benchmarks (bench/gpu_peer_serving.sh, bench/gpu_fairness_peer.sh) on a GPU
# machine: vLLM 0.26.0's OpenAI server on the Llama-3.1-8B shape with dummy weights, port 8011,
# served as "llama8b", its log in $OUT/vllm-server.log.
#   peer_server_start WHEELS TOKENIZER_TOOL [server arguments...]
# unpacks the peer's site into $STASH/vllm-site (from $STASH/part00 and .peer/vllm/part01) unless
# it is there, installs the server's extra wheels from WHEELS, writes the model directory with the
# shared dummy tokenizer, starts the server and returns once /health answers (its pid in PEER_PID),
# or returns 1 with the log's tail.
peer_server_start() {
  local wheels=$1 tokenizer=$2 site=$STASH/vllm-site model=$STASH/llama8b
  shift 2
  mkdir -p "$site" "$OUT"
  [ -d "$site/vllm" ] || cat "$STASH/part00" .peer/vllm/part01 | xz -d | tar -x -C "$site"
  python3 -m pip install -q --no-deps --target "$site" "$wheels"/*.whl 2>&1 | grep -v "already exists" | tail -2
  PYTHONPATH=$PWD python3 -c "from ward.benchmarks.models import write_config_dir as w; w('llama-3.1-8b', '$model')"
  python3 "$tokenizer" "$model" 128256
  PYTHONPATH=$site VLLM_USE_FLASHINFER_SAMPLER=0 python3 -m vllm.entrypoints.cli.main serve "$model" \
    --load-format dummy --dtype bfloat16 --max-model-len 4096 --port 8011 --served-model-name llama8b "$@" \
    > "$OUT/vllm-server.log" 2>&1 &
  PEER_PID=$!
  local probe='import urllib.request as u; u.urlopen("http://127.0.0.1:8011/health", timeout=2)'
  for _ in $(seq 300); do python3 -c "$probe" 2>/dev/null && return 0; sleep 1; done
  tail -30 "$OUT/vllm-server.log"
  kill "$PEER_PID"
  return 1
}
