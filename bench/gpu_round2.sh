#!/usr/bin/env bash
# On a GPU machine, one call: the second round's pending checks and figures for Ward (the peer runs
# beside it by bench/peer_and_ward.sh and bench/structured_peer.py in the calls around this one).
#   1. every GPU-marked test (kernels incl. token bitmask, FP8/INT4 and the FP8 KV cache, families,
#      tensor parallelism where two GPUs are present);
#   2. offline figures of the Llama-3.1-8B shape: bf16, FP8 at load, FP8 KV cache, INT4 (AWQ dummy);
#      the 70B shape at TP=2 where two GPUs are present;
#      the 70B INT4 shape on one card; the structured-output cost (schema vs none, batch 1 and 64);
#      the model-family anchors: Gemma 3 27B (per-group KV tables) and Mixtral 8x7B (fused MoE),
#      batch-1 decode and the mixed run; Qwen3-30B-A3B in bf16 and FP8 (fused MoE over FP8 experts)
#      (the peer on each: python bench/families_peer.py SHAPE OUT.json).
# Needs a tokenizer directory at .gpu/tokenizer (the default model's tokenizer files) for (2)'s
# structured workload. Results land in $OUT (bench-out by default).
set -u
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/ > "$OUT/gpu_tests.txt" 2>&1
tail -15 "$OUT/gpu_tests.txt"
run() {  # name, then ward bench offline arguments
  local name=$1; shift
  timeout 300 python3 -m ward bench offline --out "$OUT/$name" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name: $(grep -E '^(startup|latency|batch1|offline|mixed|structured)' "$OUT/$name.txt" | cut -c1-300 | tr '\n' ' ')"
  grep -iE "error|Traceback" "$OUT/$name.txt" | tail -2
}
run bf16 --model llama-3.1-8b --workloads latency,batch1,offline_256_256,offline_1024_128,mixed
run fp8 --model llama-3.1-8b --quantization fp8 --workloads latency,batch1,offline_256_256,offline_1024_128,mixed
run fp8kv --model llama-3.1-8b --kv-cache-dtype fp8 --workloads batch1,offline_256_256,mixed
run awq --model llama-3.1-8b-awq --workloads latency,batch1,offline_256_256,mixed
run awq70b --model llama-3.1-70b-awq --workloads batch1,mixed --max-num-seqs 128
run gemma3_27b --model gemma-3-27b --workloads batch1,mixed
run mixtral_8x7b --model mixtral-8x7b --workloads batch1,mixed
run qwen3_30b_a3b --model qwen3-30b-a3b --workloads batch1,mixed
run qwen3_30b_a3b_fp8 --model qwen3-30b-a3b-fp8 --workloads batch1,mixed
[ -d .gpu/tokenizer ] && run structured --model llama-3.1-8b --tokenizer .gpu/tokenizer --workloads structured
# Tensor parallelism where the machine has two GPUs: the 70B shape at TP=2 (the peer's anchor).
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
  run tp2_70b --model llama-3.1-70b --tensor-parallel-size 2 --workloads latency,batch1,offline_256_256,mixed
fi
