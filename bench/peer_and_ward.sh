#!/usr/bin/env bash
# On a GPU machine: vLLM 0.26.0 (the peer, built by the shared vllm-peer.sh into .peer/vllm) and
# Ward on the same workloads, back to back on the same card. The peer's first part was copied to
# $STASH by an earlier command; the second is at .peer/vllm/part01. WARD_ARGS: more arguments for
# Ward's `ward bench offline` (e.g. "--max-num-seqs 1024 --reserved-output-tokens 4096").
set -u
STASH=${STASH:-${TMPDIR:-/tmp}/ward-stash}
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$STASH/vllm-site" "$OUT"
cat "$STASH/part00" .peer/vllm/part01 | xz -d | tar -x -C "$STASH/vllm-site"
(cd "$OUT" && PYTHONPATH="$STASH/vllm-site" VLLM_USE_FLASHINFER_SAMPLER=0 timeout 420 python3 "$OLDPWD/.peer/vllm_workloads.py") \
  > "$OUT/vllm.txt" 2>&1
tail -8 "$OUT/vllm.txt"
PYTHONPATH="$PWD" python3 -m ward bench offline --model llama-3.1-8b --out "$OUT/ward" ${WARD_ARGS:-} > "$OUT/ward.txt" 2>&1
tail -9 "$OUT/ward.txt"
