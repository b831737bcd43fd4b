#!/usr/bin/env bash
# On a GPU machine, one call: decode attention's tile shape, pieces and request order, first the kernel
# alone (bench/attention_splits.py: every variant at each batch size), then the engine on the mixed and
# 1,000 x 256/256 workloads under each policy (Ward alone). The worker reads the switches at start:
#   POLICIES   "TILE/PIECES/ORDER" entries: TILE = tokens:warps:stages (WARD_DECODE_TILE), PIECES = 0
#              (off) or tokens:programs-per-SM (WARD_DECODE_PIECES), ORDER = 0 or 1
#              (WARD_DECODE_LONGEST_FIRST)
#   SPLIT_ARGS arguments for bench/attention_splits.py
set -u
OUT=${OUT:-$PWD/bench-out}
POLICIES=${POLICIES:-"32:4:3/0/0 64:4:3/0/1 64:4:3/256:16/1"}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name --format=csv,noheader
python3 bench/attention_splits.py ${SPLIT_ARGS:-} > "$OUT/attention_splits.txt" 2>&1
grep -v '^{' "$OUT/attention_splits.txt"  # the card, then the table of microseconds per call
for policy in $POLICIES; do
  IFS=/ read -r tile pieces order <<< "$policy"
  name="engine-tile${tile//:/x}-pieces${pieces//:/x}-order$order"
  WARD_DECODE_TILE=$tile WARD_DECODE_PIECES=$pieces WARD_DECODE_LONGEST_FIRST=$order timeout 150 python3 -m ward \
    bench offline --model llama-3.1-8b --workloads mixed,offline_256_256 --out "$OUT/$name" > "$OUT/$name.txt" 2>&1
  echo "$name: $(grep -E '^(mixed|offline)' "$OUT/$name.txt" | cut -c1-90 | tr '\n' ' ')"
done
