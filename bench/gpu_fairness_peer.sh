#!/usr/bin/env bash
# On a GPU machine: the noisy-neighbour benchmark (`ward bench fairness`) against vLLM 0.26.0's OpenAI
# server (the peer, FCFS) on the Llama-3.1-8B shape with dummy weights. The peer's first part was copied
# to $STASH by an earlier command; the second is at .peer/vllm/part01, the server's extra wheels at
# .peer/server-wheels and the shared dummy_tokenizer.py at .peer/tools.
set -u
STASH=${STASH:-${TMPDIR:-/tmp}/ward-stash}
OUT=${OUT:-$PWD/bench-out}
SITE=$STASH/vllm-site
mkdir -p "$SITE" "$OUT"
cat "$STASH/part00" .peer/vllm/part01 | xz -d | tar -x -C "$SITE"
python3 -m pip install -q --no-deps --target "$SITE" .peer/server-wheels/*.whl 2>&1 | grep -v "already exists" | tail -2
M=$STASH/llama8b
PYTHONPATH=$PWD python3 -c "from ward.benchmarks.models import write_config_dir as w; w('llama-3.1-8b', '$M')"
python3 .peer/tools/dummy_tokenizer.py "$M" 128256
PYTHONPATH=$SITE VLLM_USE_FLASHINFER_SAMPLER=0 python3 -m vllm.entrypoints.cli.main serve "$M" --load-format dummy \
  --dtype bfloat16 --max-model-len 4096 --max-num-seqs 256 --port 8011 --served-model-name llama8b \
  > "$OUT/vllm-server.log" 2>&1 &
server=$!
up() { python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8011/health', timeout=2)" 2>/dev/null; }
for _ in $(seq 300); do up && break; sleep 1; done
up || { tail -30 "$OUT/vllm-server.log"; kill $server; exit 1; }
echo "server ready after $SECONDS s"
PYTHONPATH=$PWD python3 -m ward bench fairness --base-url http://127.0.0.1:8011 --served-model llama8b \
  --max-num-seqs 256 --input ${FAIR_INPUT:-256} --output ${FAIR_OUTPUT:-128} --duration ${FAIR_DURATION:-30} \
  --warmup ${FAIR_WARMUP:-10} --vocab 120000 --out "$OUT/fairness-vllm" 2>&1 | tail -5
kill $server; wait $server 2>/dev/null
