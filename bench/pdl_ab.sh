#!/usr/bin/env bash
# On a GPU machine: programmatic dependent launch (worker/kernels/pdl.py) checked and timed.
# 1. The GPU tests of the kernels it touches, PDL on (the default), the chained CUDA-graph test first.
# 2. Ward's latency and batch-1 workloads with WARD_PDL=0 and =1, alternated (ROUNDS pairs, default 2),
#    in one call on one card, so the ratio is measured, not quoted. Each run's whole report is the last
#    line of its text file under $OUT.
set -u
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/test_pdl.py tests/test_kernels.py \
  -k "pdl or attention or graph or gemv or norm or rotary" > "$OUT/pdl_tests.txt" 2>&1
tail -4 "$OUT/pdl_tests.txt"
for round in $(seq "${ROUNDS:-2}"); do
  for setting in 0 1; do
    WARD_PDL=$setting python3 -m ward bench offline --model llama-3.1-8b --workloads "${WORKLOADS:-latency,batch1}" \
      --out "${TMPDIR:-/tmp}/pdl${setting}_r$round" > "$OUT/pdl${setting}_r$round.txt" 2>&1
    echo "WARD_PDL=$setting round $round:"
    grep -E "latency|batch1" "$OUT/pdl${setting}_r$round.txt" | head -4
  done
done
