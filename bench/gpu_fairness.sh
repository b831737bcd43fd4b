#!/usr/bin/env bash
# On a GPU machine: issue 10's figures for Ward. (1) The fair scheduler's cost on the offline workloads:
# the engine before it (a copy of worker/ at .gpu/before/worker, made by `git archive`) and now, back to
# back on the same card. (2) `ward bench fairness` through the governed stack on the Llama-3.1-8B shape
# (dummy weights). The gateway's wheels are at .gpu/gw-wheels (bench/gateway_wheels.sh), the shared
# dummy_tokenizer.py at .peer/tools. Usage: bench/gpu_fairness.sh overhead|fairness (one call each);
# ENGINE_PROCESS=1 runs the worker's engine core in its own process; GATEWAYS=N puts N gateway processes
# in front of the worker (the flood spread over them, as over replicas behind a balancer).
set -u
MODE=${1:-overhead}
OUT=${OUT:-$PWD/bench-out}
S=${GW_SITE:-${TMPDIR:-/tmp}/ward-gateway-site}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --target "$S" .gpu/gw-wheels/*.whl 2>&1 | grep -v "already exists" | tail -1
WORKLOADS=${WORKLOADS:-offline_256_256,offline_1024_128}
[ "$MODE" = overhead ] && for version in before after before after; do
  if [ "$version" = before ]; then path=$PWD/.gpu/before:$PWD:$S; else path=$PWD:$S; fi
  PYTHONPATH=$path python3 -m ward bench offline --model llama-3.1-8b --workloads "$WORKLOADS" \
    --out "/tmp/ward-offline-$version" > "/tmp/ward-offline-$version.txt" 2>&1
  echo "$version: $(grep -E '^(offline|mixed)' "/tmp/ward-offline-$version.txt" | tr '\n' ' ' | cut -c1-400)"
  tail -3 "/tmp/ward-offline-$version.txt" | grep -i error
  cp "/tmp/ward-offline-$version/ward_bench_offline.json" "$OUT/offline-$version-$SECONDS.json" 2>/dev/null
done
# Where the time goes under the flood: each process's CPU share and stacks (py-spy, where its wheel is at
# .gpu/tools), taken once the flood phase is established.
profile_flood() {
  local log=$1
  until grep -q '^alone' "$log" 2>/dev/null; do sleep 1; done
  sleep $(( ${FAIR_WARMUP:-10} + 8 ))
  top -b -n 1 -w 200 | head -25 > "$OUT/flood-top.txt"
  for pid in $(pgrep -f "ward (gateway|worker)"); do
    name=$(tr '\0' ' ' < /proc/$pid/cmdline | grep -oE "ward (gateway|worker)" | tr ' ' '-')
    [ -x "$S/bin/py-spy" ] && "$S/bin/py-spy" dump --pid "$pid" > "$OUT/flood-dump-$name-$pid.txt" 2>&1
    [ -x "$S/bin/py-spy" ] && timeout 20 "$S/bin/py-spy" record --pid "$pid" -d 6 -r 40 --format raw \
      -o "$OUT/flood-profile-$name-$pid.txt" > /dev/null 2>&1 &
  done
  wait
}
[ "$MODE" = fairness ] && ls .gpu/tools/*.whl >/dev/null 2>&1 && \
  python3 -m pip install -q --no-deps --target "$S" .gpu/tools/*.whl 2>&1 | grep -v "already exists" | tail -1
[ "$MODE" = fairness ] && { profile_flood "$OUT/fairness.log" & }
[ "$MODE" = fairness ] && PYTHONPATH=$PWD:$S python3 -m ward bench fairness --model llama-3.1-8b --device cuda --max-num-seqs 256 \
  --input ${FAIR_INPUT:-256} --output ${FAIR_OUTPUT:-128} --duration ${FAIR_DURATION:-30} --warmup ${FAIR_WARMUP:-10} \
  --weights 1,2 ${ENGINE_PROCESS:+--engine-process} --gateways ${GATEWAYS:-1} --tokenizer-tool-for-shape .peer/tools/dummy_tokenizer.py --out "$OUT/fairness-ward" > "$OUT/fairness.log" 2>&1; tail -5 "$OUT/fairness.log"
[ "$MODE" = fairness ] && grep -iE "error|traceback" "$OUT/fairness-ward/gateway.log" | tail -5
true
