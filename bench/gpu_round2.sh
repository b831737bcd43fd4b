#!/usr/bin/env bash
# On a GPU machine: the second round's pending checks and figures for Ward, as steps that fit the
# per-call limit when run a few at a time (STEPS="tests bf16" ...; all of them by default, which
# takes longer than one call allows). The peer runs beside it: bench/peer_and_ward.sh (Llama 8B),
# python bench/families_peer.py SHAPE OUT.json (Gemma 3 27B, Mixtral 8x7B, Qwen3-30B-A3B[-fp8]),
# python bench/structured_peer.py MODEL_DIR OUT.json.
#   tests          every GPU-marked test (kernels incl. token bitmask, FP8/INT4/FP8 MoE and the FP8
#                  KV cache, families, per-group KV tables, tensor parallelism with two GPUs)
#   bf16 fp8 fp8kv awq          the Llama-3.1-8B shape: bf16, FP8 at load, FP8 KV cache, INT4 (AWQ dummy)
#   awq70b                      the 70B INT4 shape on one card
#   gemma3 mixtral qwen3 qwen3fp8   the family anchors: batch-1 decode and the mixed run
#   structured                  the structured-output cost (needs .gpu/tokenizer: the default
#                               model's tokenizer files)
#   tp2                         the 70B shape at TP=2 (two GPUs)
# Results land in $OUT (bench-out by default).
set -u
OUT=${OUT:-$PWD/bench-out}
STEPS=${STEPS:-tests bf16 fp8 fp8kv awq awq70b gemma3 mixtral qwen3 qwen3fp8 structured tp2}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
run() {  # name, then ward bench offline arguments
  local name=$1; shift
  timeout 300 python3 -m ward bench offline --out "$OUT/$name" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name: $(grep -E '^(startup|latency|batch1|offline|mixed|structured)' "$OUT/$name.txt" | cut -c1-300 | tr '\n' ' ')"
  grep -iE "error|Traceback" "$OUT/$name.txt" | tail -2
}
for step in $STEPS; do
  case $step in
    tests)
      # the GPU image lacks the gateway's packages: collect only the files that hold GPU tests
      timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu --continue-on-collection-errors \
        $(grep -l "mark.gpu" tests/*.py) > "$OUT/gpu_tests.txt" 2>&1
      tail -15 "$OUT/gpu_tests.txt" ;;
    bf16) run bf16 --model llama-3.1-8b --workloads latency,batch1,offline_256_256,offline_1024_128,mixed ;;
    fp8) run fp8 --model llama-3.1-8b --quantization fp8 --workloads latency,batch1,offline_256_256,offline_1024_128,mixed ;;
    fp8kv) run fp8kv --model llama-3.1-8b --kv-cache-dtype fp8 --workloads batch1,offline_256_256,mixed ;;
    awq) run awq --model llama-3.1-8b-awq --workloads latency,batch1,offline_256_256,mixed ;;
    awq70b) run awq70b --model llama-3.1-70b-awq --workloads batch1,mixed --max-num-seqs 128 ;;
    gemma3) run gemma3_27b --model gemma-3-27b --workloads batch1,mixed ;;
    mixtral) run mixtral_8x7b --model mixtral-8x7b --workloads batch1,mixed ;;
    qwen3) run qwen3_30b_a3b --model qwen3-30b-a3b --workloads batch1,mixed ;;
    qwen3fp8) run qwen3_30b_a3b_fp8 --model qwen3-30b-a3b-fp8 --workloads batch1,mixed ;;
    structured)
      if [ -d .gpu/tokenizer ]; then run structured --model llama-3.1-8b --tokenizer .gpu/tokenizer --workloads structured
      else echo "structured: skipped, no .gpu/tokenizer"; fi ;;
    tp2)
      if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
        run tp2_70b --model llama-3.1-70b --tensor-parallel-size 2 --workloads latency,batch1,offline_256_256,mixed
      else echo "tp2: skipped, one GPU"; fi ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
