#!/usr/bin/env bash
# On a GPU machine: vLLM 0.26.0 and Ward in one precision other than bf16, back to back on one card,
# on the five offline workloads (bench/families_peer.py for the peer, `ward bench offline` for Ward).
# PRECISION: the flags both engines take, default "--quantization fp8" (FP8 weights quantized at load,
# per-token activations); "--quantization fp8 --kv-cache-dtype fp8" adds the FP8 KV cache. Ward runs
# once per entry of WARD_ENVS (entries separated by ';': environment assignments, then any flags of
# `ward bench offline`), e.g. "WARD_FP8_FAST_ACCUM=1;WARD_FP8_FAST_ACCUM=0" or
# ";--max-num-seqs 1024 --reserve-beyond-seqs 256". The peer's first part was copied to $STASH by an
# earlier command (as for bench/peer_and_ward.sh); the second is at .peer/vllm/part01. The peer's
# build leaves out compressed-tensors, which vLLM's FP8 layers import: its wheel and loguru's
# (`pip download --no-deps compressed-tensors==0.17.0 loguru -d .peer/fp8-wheels`) are unpacked
# beside it from .peer/fp8-wheels, or from $STASH/fp8-wheels where an earlier command put them.
set -u
STASH=${STASH:-${TMPDIR:-/tmp}/ward-stash}
OUT=${OUT:-$PWD/bench-out}
PRECISION=${PRECISION:---quantization fp8}
WORKLOADS=${WORKLOADS:-latency,batch1,offline_256_256,offline_1024_128,mixed}
mkdir -p "$STASH/vllm-site" "$OUT"
[ -d "$STASH/vllm-site/vllm" ] || cat "$STASH/part00" .peer/vllm/part01 | xz -d | tar -x -C "$STASH/vllm-site"
for wheel in .peer/fp8-wheels/*.whl "$STASH"/fp8-wheels/*.whl; do
  [ -f "$wheel" ] && python3 -m zipfile -e "$wheel" "$STASH/vllm-site"
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
# shellcheck disable=SC2086  # PRECISION holds several flags
PYTHONPATH="$STASH/vllm-site" VLLM_USE_FLASHINFER_SAMPLER=0 timeout "${PEER_TIMEOUT:-300}" \
  python3 bench/families_peer.py llama-3.1-8b "$OUT/vllm.json" --workloads "$WORKLOADS" $PRECISION > "$OUT/vllm.txt" 2>&1
echo "vllm rc=$?"; grep -E "^(latency|batch1|offline|mixed)" "$OUT/vllm.txt"; grep -E "Error|Traceback" "$OUT/vllm.txt" | tail -3
IFS=';' read -ra ENVS <<< "${WARD_ENVS:-}"
[ ${#ENVS[@]} -eq 0 ] && ENVS=("")
run=0
for entry in "${ENVS[@]}"; do
  run=$((run + 1))
  echo "ward $run: ${entry:-defaults}"
  assignments=() flags=()
  for word in $entry; do  # assignments up to the first word that is not one, then flags
    if [ ${#flags[@]} -eq 0 ] && [[ $word =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
      assignments+=("$word")
    else
      flags+=("$word")
    fi
  done
  # shellcheck disable=SC2086
  env "${assignments[@]}" PYTHONPATH="$PWD" timeout "${WARD_TIMEOUT:-200}" python3 -m ward bench offline --model llama-3.1-8b \
    --out "$OUT/ward$run" --workloads "$WORKLOADS" $PRECISION "${flags[@]}" > "$OUT/ward$run.txt" 2>&1
  echo "rc=$?"; grep -E "^(startup|latency|batch1|offline|mixed)" "$OUT/ward$run.txt" | cut -c1-200
  grep -E "Error|Traceback" "$OUT/ward$run.txt" | tail -3
done
