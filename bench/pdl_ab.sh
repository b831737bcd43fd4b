#!/usr/bin/env bash
# On a GPU machine: kernel settings switched by environment (programmatic dependent launch,
# worker/kernels/pdl.py, by default), checked and timed.
# 1. The GPU tests of the kernels they touch (TESTS, a pytest -k expression; - for none) in
#    TEST_FILES (default tests/test_pdl.py tests/test_kernels.py), PDL on.
# 2. Ward's latency and batch-1 workloads (WORKLOADS: others) for each of VARIANTS (space-separated; each a comma list
#    of environment settings, "-" for none), alternated for ROUNDS rounds (default 2), in one call
#    on one card, so the ratios are measured, not quoted. Each run's whole report is the last line
#    of its text file under $OUT.
set -u
OUT=${OUT:-$PWD/bench-out}
VARIANTS=${VARIANTS:-"WARD_PDL=0 WARD_PDL=1"}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "${TESTS:-}" != "-" ]; then  # TESTS=- skips them (checked in an earlier call)
  python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu ${TEST_FILES:-tests/test_pdl.py tests/test_kernels.py} \
    -k "${TESTS:-pdl or attention or graph or gemv or norm or rotary}" > "$OUT/pdl_tests.txt" 2>&1
  tail -4 "$OUT/pdl_tests.txt"
fi
for round in $(seq "${ROUNDS:-2}"); do
  n=0
  for variant in $VARIANTS; do
    n=$((n + 1))
    settings=()
    [ "$variant" = "-" ] || IFS=',' read -r -a settings <<< "$variant"
    timeout "${RUN_LIMIT:-120}" env "${settings[@]}" python3 -m ward bench offline --model llama-3.1-8b --workloads "${WORKLOADS:-latency,batch1}" \
      --out "${TMPDIR:-/tmp}/v${n}_r$round" > "$OUT/v${n}_r$round.txt" 2>&1
    echo "$variant, round $round: $(grep -E '^(latency|batch1|offline|mixed)' "$OUT/v${n}_r$round.txt" | cut -c1-200 | tr '\n' ' ')"
  done
done
