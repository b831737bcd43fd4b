#!/usr/bin/env bash
# On a GPU machine: the noisy-neighbour benchmark (`ward bench fairness`) against vLLM 0.26.0's OpenAI
# server (the peer, FCFS) on the Llama-3.1-8B shape with dummy weights. The peer's first part was copied
# to $STASH by an earlier command; the second is at .peer/vllm/part01, the server's extra wheels at
# .peer/server-wheels and the shared dummy_tokenizer.py at .peer/tools.
set -u
STASH=${STASH:-${TMPDIR:-/tmp}/ward-stash}
OUT=${OUT:-$PWD/bench-out}
. bench/peer_server.sh
peer_server_start .peer/server-wheels .peer/tools/dummy_tokenizer.py --max-num-seqs 256 || exit 1
echo "server ready after $SECONDS s"
PYTHONPATH=$PWD python3 -m ward bench fairness --base-url http://127.0.0.1:8011 --served-model llama8b \
  --max-num-seqs 256 --input ${FAIR_INPUT:-256} --output ${FAIR_OUTPUT:-128} --duration ${FAIR_DURATION:-30} \
  --warmup ${FAIR_WARMUP:-10} --vocab 120000 --out "$OUT/fairness-vllm" 2>&1 | tail -5
kill $PEER_PID; wait $PEER_PID 2>/dev/null
