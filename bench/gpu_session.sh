#!/usr/bin/env bash
# On a GPU machine, one call: the steps named in STEPS, each only if it can finish inside BUDGET
# seconds of the call. Results and logs land in $OUT (bench-out by default).
#   int4       the INT4 GEMV against earlier versions of the module (bench/int4_variants/*.py, when
#              present) and cuBLAS bf16, then a sweep of its tile plan (bench/int4_gemv.py)
#   quant      the quantized kernels' GPU tests (tests/test_quant_kernels.py, tests/test_quantization.py)
#   awq        INT4 Llama-3.1-8B shape, batch-1 decode       awq70b   the 70B INT4 shape on one card
#   fp8        FP8 weights, batch 1 and 1,000 x 256/256      fp8kv    an FP8 KV cache, the same
#   fp8layers  the FP8 projections one at a time from 1 to 2,048 rows: cuBLAS bf16, W8A8 with the
#              activation quantized by torch operations and by the one kernel, the FP8 GEMV
#              (bench/fp8_layers.py)
#   fp8quant   FP8 weights, the whole model (latency, batch 1, 1,000 x 256/256, mixed) with the
#              activation quantization as torch operations (WARD_FP8_QUANT_KERNEL=0) and as one kernel
#   fp8gemm    FP8 weights, latency, 1,000 x 256/256 and mixed with torch._scaled_mm's precise and fast
#              accumulation (WARD_FP8_FAST_ACCUM=0/1; 1 is the default), alternated twice; then the
#              per-channel GEMMs one shape at a time: torch._scaled_mm both ways against Ward's Triton
#              kernel over a grid of tile plans (bench/fp8_gemm_sweep.py, FP8_GEMM_ROWS row counts)
#   fp8profile where an FP8 step's device time goes, kernel by kernel (bench/gpu_profile.py --quantization fp8)
#              at the latency test's batch, at 256 sequences and in a prefill, then the same with
#              the FP8 cache
#   fp8decode  FP8 weights, latency and batch 1: decode steps through W8A8 (WARD_DECODE_GEMV=0), through
#              the decode GEMV over the e4m3 weights, and (FP8_GEMV_PLANS set) with those plans,
#              alternated twice
#   serving    the governed stack at LEVELS (bench/gpu_serving.sh; .gpu/gw-wheels and .peer's tools)
#   serving_ab the same with routing.multiplex on, then off (a Generate call per request)
#   serving_ep the same with the worker's engine core in its own process (ward worker --engine-process)
#   serving_gc the same with the worker's collector thresholds at GC_THRESHOLD (default 700,10,100:
#              full collections about ten times rarer), e.g. STEPS="serving serving_gc serving serving_gc"
#   variants   the governed stack at VARIANT_LEVELS (default "64 256") once per entry of
#              WORKER_VARIANTS (worker arguments, entries separated by ';', an empty entry for the
#              defaults), e.g. "--max-num-batched-tokens 2048;--decode-step-tokens 2048;"
#   admission  1,000 x 256/256, 1,000 x 1,024/128 and mixed with the defaults, then with SEQS sequences
#              a step (default "512 1024") whose admission keeps room for RESERVE outputs each (default
#              4096: a request's whole max_tokens), so more sequences run without preemption, and with
#              that room asked only of the seats beyond 256 (--reserve-beyond-seqs 256); ADMISSION_ARGS:
#              more flags for every run, e.g. "--quantization fp8" (a smaller model leaves a larger pool)
#   gemv       the decode GEMV's plans retuned on this card (bench/gemv_sweep.py), then the whole model at
#              batch 1 and in the latency test with the table's plans and with the sweep's proposal,
#              alternated twice; GEMV_PLANS overrides the proposal (here and in the two below); the
#              winner's name in gemv_verdict.txt
#   gemvall    the 16-bit decode GEMV walked at one row and at 8 rows a launch (bench/gemv_sweep.py, then
#              --rows 8), then the whole model at batch 1 and in the latency test with the tables' plans
#              and with both proposals (WARD_GEMV_PLANS and WARD_GEMV_WIDE_PLANS), alternated twice; the
#              verdict and the two proposals also in $STASH (default /tmp/ward-stash) for a next call
#   fp8kvrope  the model with an FP8 KV cache (batch 1, latency) with the rotary and the e4m3 cache write as
#              two launches and as one (WARD_ROPE_CACHE_FUSION=0/1), alternated twice, after their GPU tests
#   moealign   Qwen3-30B-A3B (batch 1, latency) with the expert grouping in torch and in one launch
#              (WARD_MOE_ALIGN_KERNEL=0/1), alternated twice, after its GPU tests; the verdict
#   moeroute   the same with the MoE router in torch and in one launch (WARD_MOE_ROUTING_KERNEL=0/1)
#   qknorm     Gemma 3 27B (batch 1, mixed) with its q/k head norms launched apart and in the rotary cache
#              write (WARD_QK_NORM_FUSION=0/1), alternated twice, after their GPU tests; the verdict
#   tune       `ward tune gemv` for Llama-3.1-8B on this card (TUNE_ARGS: more flags, e.g. "--rows one"),
#              its file in $OUT/tuned and in $STASH/tuned for a next call
#   tuneab     the whole model at batch 1 and in the latency test without and with the tuned file
#              (TUNED_FOLDER, default $OUT/tuned, else $STASH/tuned) as WARD_TUNED_CONFIG_FOLDER,
#              alternated twice; the verdict
#   tmaprobe   the decode GEMV with its weight tiles fetched by TMA beside the engine's, per projection at
#              1 and 8 rows (bench/gemv_tma_probe.py --quick; TMA_PROBE_ARGS= for the whole grid)
#   fp8w8a8    the FP8 model at batch 1 and in the latency test with the decode GEMV widening its e4m3
#              weights and with W8A8_MODE (default normed: qkv and gate_up over the norm's e4m3 rows) as
#              WARD_FP8_GEMV_W8A8, alternated twice; the verdict
#   silufp8    the FP8 model (1,000 x 1,024/128, mixed, 1,000 x 256/256) with the SiLU-and-quantize row read
#              twice and once (WARD_SILU_FP8_ONE_PASS=0/1), alternated twice; the throughput verdict
#   gemma      Gemma 3 27B (batch 1, mixed) with its norms and GeGLU as torch expressions and as the Triton
#              kernels (WARD_GEMMA_KERNELS=0/1), alternated twice, after their GPU tests; the verdict
#   fp8math    the FP8 decode GEMV's three ways to meet e4m3 weights (widened to bf16, to f16, or an
#              e4m3-by-e4m3 dot over x quantized per row) per projection at 1 and 8 rows (bench/gemv_fp8_math.py)
#   gemvfp8    the same for the FP8 layers' decode (bench/gemv_sweep.py --fp8, e4m3 weights widened), the
#              whole model quantized to FP8 at load at batch 1 and in the latency test, alternated twice
#              (by default qkv and gate_up take the e4m3-by-e4m3 plans: their proposals count only
#              with WARD_FP8_GEMV_W8A8=0)
#   gemvfp8wide the FP8 layers' decode GEMV walked at 8 rows a launch (bench/gemv_sweep.py --fp8 --rows 8,
#              WIDE_SHAPES, default gate_up_silu and down), then the FP8 model at batch 1 and in the
#              latency test without and with the proposal as WARD_GEMV_WIDE_PLANS, alternated twice
#   prefill    prefill attention tile shapes beside FlashAttention-3 (bench/prefill_attention.py; FA3
#              only when the peer's site is on PYTHONPATH)
#   norm       the whole model at batch 1 and in the latency test without and with the RMSNorms folded
#              into the GEMVs around them (WARD_NORM_GEMV=1), alternated twice
#   argmax     the whole model (latency, batch 1, 1,000 x 256/256) with torch.argmax and with the Triton
#              argmax of greedy steps (WARD_TRITON_ARGMAX=1), alternated twice
#   ctxgraphs  decode graphs for short contexts: their GPU tests, decode attention at batch 1 and 8 over short
#              contexts with the split counts a graph at the model's length launches ("auto") and forced
#              ones, then the whole model (latency, batch 1) with WARD_DECODE_CONTEXT_GRAPHS=0 and 1,
#              alternated twice
#   tunable    TunableOp against cuBLAS's default for the projections (bench/gemm_tunable.py)
#   seqs       1,000 x 256/256 and 1,000 x 1,024/128 with 512 and 1,024 sequences per step (vLLM's
#              default on this class of card is 1,024), each without and with a KV reserve of 256 outputs
set -u
OUT=${OUT:-$PWD/bench-out}
BUDGET=${BUDGET:-570}
RESERVE=${RESERVE:-4096}
STEPS=${STEPS:-int4 quant awq serving awq70b fp8 fp8kv}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
left() { echo $((BUDGET - SECONDS)); }
step() {  # name, seconds it may take, command...
  local name=$1 need=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then echo "$name: not run ($(left) s left)"; return; fi
  timeout "$need" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name rc=$? ($SECONDS s): $(grep -E '^(startup|latency|batch1|offline|mixed|[0-9]+ passed|.*(passed|failed))' "$OUT/$name.txt" | cut -c1-260 | tr '\n' ' ')"
  grep -iE "error|Traceback" "$OUT/$name.txt" | grep -v "_err" | tail -3
}
bench() { local name=$1 need=$2; shift 2; step "$name" "$need" python3 -m ward bench offline --out "$OUT/$name" "$@"; }
RUNS=0
serving() {  # name, then environment assignments for the stack (a step named twice keeps both runs)
  local name=$1; shift
  RUNS=$((RUNS + 1)); [ -e "$OUT/$name" ] && name="$name-$RUNS"
  if [ ! -d .gpu/gw-wheels ] || [ "$(left)" -lt "${SERVING_NEED:-150}" ]; then echo "$name: not run ($(left) s left)"; return; fi
  env OUT="$OUT/$name" LEVELS="${LEVELS:-1 64 256}" "$@" timeout 140 bash bench/gpu_serving.sh > "$OUT/$name.txt" 2>&1
  echo "$name ($SECONDS s):"; python3 bench/level_summary.py < "$OUT/$name.txt"
}
retune_gemv() {  # name, plan variable, base and candidate step stems, then bench/gemv_sweep.py's flags
  # The sweep, then the whole model (MODEL_ARGS) at batch 1 and in the latency test with the plans in
  # force and with the proposal (or GEMV_PLANS) in the plan variable, alternated twice; the verdict.
  local name=$1 variable=$2 base=$3 candidate=$4 plans round; shift 4
  step "${name}_sweep" 150 python3 bench/gemv_sweep.py "$@" --out "$OUT/${name}_sweep.json" \
    --plans-file "$OUT/${name}_plans.txt"
  grep -E '^\{"(qkv|o|down|gate_up_silu)"|^WARD_GEMV' "$OUT/${name}_sweep.txt" | cut -c1-400
  plans=${GEMV_PLANS:-$(cat "$OUT/${name}_plans.txt" 2>/dev/null)}
  [ -n "$plans" ] && [ "$(left)" -gt 160 ] || return
  for round in 1 2; do
    bench "${base}_r$round" 70 "${MODEL_ARGS[@]}" --workloads latency,batch1
    step "${candidate}_r$round" 70 env "$variable=$plans" python3 -m ward bench offline \
      --out "$OUT/${candidate}_r$round" "${MODEL_ARGS[@]}" --workloads latency,batch1
  done
  python3 bench/gemv_verdict.py "$OUT" "$base" "$candidate" | tee "$OUT/${name}_verdict.txt"
}
gpu_tests() {  # step name, seconds it may take, pytest -k expression: tests/test_kernels.py's GPU cases
  step "$1" "$2" python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/test_kernels.py -k "$3"
  tail -1 "$OUT/$1.txt"
}
alternate() {  # name prefix, seconds a run may take, variable, value A, side A, value B, side B, bench args...
  # `ward bench offline` with the variable at each value in turn, two rounds: steps <prefix><side>_r<round>
  local prefix=$1 need=$2 variable=$3 value_a=$4 side_a=$5 value_b=$6 side_b=$7 round; shift 7
  for round in 1 2; do
    step "${prefix}${side_a}_r$round" "$need" env "$variable=$value_a" python3 -m ward bench offline \
      --out "$OUT/${prefix}${side_a}_r$round" "$@"
    step "${prefix}${side_b}_r$round" "$need" env "$variable=$value_b" python3 -m ward bench offline \
      --out "$OUT/${prefix}${side_b}_r$round" "$@"
  done
}
MODEL_ARGS=()
for s in $STEPS; do
  case $s in
    int4)
      VARIANTS=()
      for f in bench/int4_variants/*.py; do [ -f "$f" ] && VARIANTS+=(--variant "$(basename "$f" .py)=$f"); done
      step int4_gemv 120 python3 bench/int4_gemv.py "${VARIANTS[@]}"
      grep -E '"best"|"shape"' "$OUT/int4_gemv.txt" | cut -c1-420 ;;
    quant) step quant_tests 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu tests/test_quant_kernels.py tests/test_quantization.py
      tail -3 "$OUT/quant_tests.txt" ;;
    awq) bench awq_b1 80 --model llama-3.1-8b-awq --workloads batch1 ;;
    awq70b) bench awq70b_b1 110 --model llama-3.1-70b-awq --workloads batch1 --max-num-seqs 128 ;;
    fp8) bench fp8 100 --model llama-3.1-8b --quantization fp8 --workloads batch1,offline_256_256 ;;
    fp8layers) step fp8_layers 150 python3 bench/fp8_layers.py
               grep -E '^\{' "$OUT/fp8_layers.txt" | cut -c1-400 ;;
    fp8quant) for on in 0 1; do
                step "fp8quant$on" 150 env WARD_FP8_QUANT_KERNEL=$on python3 -m ward bench offline \
                  --out "$OUT/fp8quant$on" --model llama-3.1-8b --quantization fp8 \
                  --workloads latency,batch1,offline_256_256,mixed
              done ;;
    fp8decode) for round in 1 2; do
                 step "fp8decode_w8a8_r$round" 70 env WARD_DECODE_GEMV=0 python3 -m ward bench offline \
                   --out "$OUT/fp8decode_w8a8_r$round" --model llama-3.1-8b --quantization fp8 --workloads latency,batch1
                 bench "fp8decode_gemv_r$round" 70 --model llama-3.1-8b --quantization fp8 --workloads latency,batch1
                 if [ -n "${FP8_GEMV_PLANS:-}" ]; then
                   step "fp8decode_plans_r$round" 70 env WARD_GEMV_PLANS="$FP8_GEMV_PLANS" python3 -m ward bench \
                     offline --out "$OUT/fp8decode_plans_r$round" --model llama-3.1-8b --quantization fp8 \
                     --workloads latency,batch1
                 fi
               done ;;
    fp8gemm) alternate fp8accum 100 WARD_FP8_FAST_ACCUM 0 0 1 1 --model llama-3.1-8b --quantization fp8 \
               --workloads latency,offline_256_256,mixed
             step fp8gemm_sweep 200 python3 bench/fp8_gemm_sweep.py --rows "${FP8_GEMM_ROWS:-64,256,512,2048}"
             grep '^{' "$OUT/fp8gemm_sweep.txt" | cut -d, -f1,2,5- | cut -c1-330 ;;
    fp8profile) step fp8profile 150 python3 bench/gpu_profile.py --quantization fp8 --cases decode_b8_ctx32 \
                  decode_b256_ctx1000 prefill_8x1024
                grep -E "^(==|  )" "$OUT/fp8profile.txt" | head -60
                step fp8kvprofile 120 python3 bench/gpu_profile.py --quantization fp8 --kv-cache-dtype fp8 --cases \
                  decode_b256_ctx1000
                grep -E "^(==|  )" "$OUT/fp8kvprofile.txt" | head -20 ;;
    fp8kv) bench fp8kv 80 --model llama-3.1-8b --kv-cache-dtype fp8 --workloads batch1,offline_256_256 ;;
    serving) serving serving WARD_ROUTING__MULTIPLEX=true ;;
    serving_ab) serving serving_mux WARD_ROUTING__MULTIPLEX=true; serving serving_calls WARD_ROUTING__MULTIPLEX=false ;;
    serving_ep) serving serving_ep WARD_ROUTING__MULTIPLEX=true ENGINE_PROCESS=1 ;;
    serving_gc) serving serving_gc WARD_ROUTING__MULTIPLEX=true WARD_GC_THRESHOLD=${GC_THRESHOLD:-700,10,100} ;;
    variants) IFS=';' read -ra VARIANT_LIST <<< "${WORKER_VARIANTS:-}"
              for v in "${VARIANT_LIST[@]}"; do
                echo "worker args: '${v}'"
                SERVING_NEED=80 serving variant WARD_ROUTING__MULTIPLEX=true WORKER_ARGS="$v" LEVELS="${VARIANT_LEVELS:-64 256}"
              done ;;
    seqs) for n in ${SEQS:-512 1024}; do
            bench "seqs$n" 110 --workloads offline_256_256,offline_1024_128 --max-num-seqs "$n"
            bench "seqs$n-reserve" 110 --workloads offline_256_256,offline_1024_128 --max-num-seqs "$n" \
              --reserved-output-tokens 256
          done ;;
    admission) # shellcheck disable=SC2086  # ADMISSION_ARGS holds several flags
               bench admission-base 130 --workloads offline_256_256,offline_1024_128,mixed ${ADMISSION_ARGS:-}
               for n in ${SEQS:-512 1024}; do
                 # shellcheck disable=SC2086
                 bench "admission$n-r$RESERVE" 130 --workloads offline_256_256,offline_1024_128,mixed \
                   --max-num-seqs "$n" --reserved-output-tokens "$RESERVE" ${ADMISSION_ARGS:-}
                 # shellcheck disable=SC2086
                 bench "admission$n-beyond256" 130 --workloads offline_256_256,offline_1024_128,mixed \
                   --max-num-seqs "$n" --reserve-beyond-seqs 256 ${ADMISSION_ARGS:-}
               done ;;
    gemv) retune_gemv gemv WARD_GEMV_PLANS gemv_table gemv_proposal ;;
    gemvall) step gemvall_sweep1 170 python3 bench/gemv_sweep.py --out "$OUT/gemvall_sweep1.json" \
               --plans-file "$OUT/gemvall_plans1.txt"
             step gemvall_sweep8 170 python3 bench/gemv_sweep.py --rows 8 --out "$OUT/gemvall_sweep8.json" \
               --plans-file "$OUT/gemvall_plans8.txt"
             grep -hE '^\{"(qkv|o|down|gate_up_silu)"|^WARD_GEMV' "$OUT"/gemvall_sweep[18].txt | cut -c1-400
             one=$(cat "$OUT/gemvall_plans1.txt" 2>/dev/null); wide=$(cat "$OUT/gemvall_plans8.txt" 2>/dev/null)
             if [ -n "$one$wide" ]; then
               for round in 1 2; do
                 bench "gemvall_table_r$round" 70 --workloads latency,batch1
                 step "gemvall_proposal_r$round" 70 env WARD_GEMV_PLANS="$one" WARD_GEMV_WIDE_PLANS="$wide" \
                   python3 -m ward bench offline --out "$OUT/gemvall_proposal_r$round" --workloads latency,batch1
               done
               python3 bench/gemv_verdict.py "$OUT" gemvall_table gemvall_proposal | tee "$OUT/gemvall_verdict.txt"
             fi
             mkdir -p "${STASH:-/tmp/ward-stash}"
             cp "$OUT"/gemvall_plans[18].txt "$OUT/gemvall_verdict.txt" "${STASH:-/tmp/ward-stash}/" 2>/dev/null ;;
    fp8w8a8) alternate fp8w8a8_ 80 WARD_FP8_GEMV_W8A8 0 widen "${W8A8_MODE:-normed}" w8a8 --model llama-3.1-8b \
               --quantization fp8 --workloads latency,batch1
             python3 bench/gemv_verdict.py "$OUT" fp8w8a8_widen fp8w8a8_w8a8 ;;
    silufp8) alternate silufp8_pass 130 WARD_SILU_FP8_ONE_PASS 0 0 1 1 --model llama-3.1-8b --quantization fp8 \
               --workloads offline_1024_128,mixed,offline_256_256
             python3 bench/gemv_verdict.py "$OUT" silufp8_pass0 silufp8_pass1 \
               --throughput offline_1024_128:req_s,mixed:out_tok_s,offline_256_256:req_s ;;
    tune) step tune_gemv 420 python3 -m ward tune gemv --model llama-3.1-8b --folder "$OUT/tuned" \
            --report "$OUT/tune_gemv.json" ${TUNE_ARGS:-}
          grep -E " -> |written|unchanged|ward tune" "$OUT/tune_gemv.txt" | cut -c1-200
          mkdir -p "${STASH:-/tmp/ward-stash}" && cp -r "$OUT/tuned" "${STASH:-/tmp/ward-stash}/" 2>/dev/null ;;
    tuneab) folder=${TUNED_FOLDER:-$OUT/tuned}; [ -d "$folder" ] || folder=${STASH:-/tmp/ward-stash}/tuned
            if ls "$folder"/*.json > /dev/null 2>&1; then
              alternate tune_ 70 WARD_TUNED_CONFIG_FOLDER "$OUT/no-tuned-configs" tables "$folder" tuned \
                --workloads latency,batch1
              python3 bench/gemv_verdict.py "$OUT" tune_tables tune_tuned
            else echo "tuneab: no tuned file in $folder"; fi ;;
    fp8kvrope) gpu_tests fp8kvrope_tests 90 "fp8_cache_write"
               alternate fp8kvrope_ 80 WARD_ROPE_CACHE_FUSION 0 apart 1 fused --model llama-3.1-8b \
                 --kv-cache-dtype fp8 --workloads latency,batch1
               python3 bench/gemv_verdict.py "$OUT" fp8kvrope_apart fp8kvrope_fused ;;
    moealign) gpu_tests moealign_tests 90 "moe"
              alternate moealign_ 120 WARD_MOE_ALIGN_KERNEL 0 torch 1 kernel --model qwen3-30b-a3b \
                --workloads latency,batch1
              python3 bench/gemv_verdict.py "$OUT" moealign_torch moealign_kernel ;;
    moeroute) alternate moeroute_ 120 WARD_MOE_ROUTING_KERNEL 0 torch 1 kernel --model qwen3-30b-a3b \
                --workloads latency,batch1
              python3 bench/gemv_verdict.py "$OUT" moeroute_torch moeroute_kernel ;;
    qknorm) gpu_tests qknorm_tests 90 "head_norms"
            alternate qknorm_ "${GEMMA_NEED:-150}" WARD_QK_NORM_FUSION 0 apart 1 fused --model gemma-3-27b \
              --workloads batch1,mixed
            python3 bench/gemv_verdict.py "$OUT" qknorm_apart qknorm_fused --throughput batch1:tok_s,mixed:out_tok_s ;;
    gemma) gpu_tests gemma_tests 120 "gemma or gelu or head_norms"
           alternate gemma_ "${GEMMA_NEED:-150}" WARD_GEMMA_KERNELS 0 torch 1 kernels --model gemma-3-27b \
             --workloads batch1,mixed
           python3 bench/gemv_verdict.py "$OUT" gemma_torch gemma_kernels --throughput batch1:tok_s,mixed:out_tok_s ;;
    fp8math) step fp8_math "${FP8_MATH_NEED:-240}" python3 bench/gemv_fp8_math.py --out "$OUT/fp8_math.json"
             grep -E '^\{"(qkv|o|down|gate_up_silu)"' "$OUT/fp8_math.txt" | cut -c1-900 ;;
    tmaprobe) step tma_probe "${TMA_PROBE_NEED:-120}" python3 bench/gemv_tma_probe.py ${TMA_PROBE_ARGS---quick} \
                --out "$OUT/tma_probe.json"
              grep -E '^\{"(qkv|o|down|gate_up_silu)"' "$OUT/tma_probe.txt" | cut -c1-600 ;;
    gemvfp8) MODEL_ARGS=(--model llama-3.1-8b --quantization fp8)
             retune_gemv gemvfp8 WARD_GEMV_PLANS fp8gemv_rule fp8gemv_proposal --fp8
             MODEL_ARGS=() ;;
    gemvfp8wide) MODEL_ARGS=(--model llama-3.1-8b --quantization fp8)
                 retune_gemv gemvwide WARD_GEMV_WIDE_PLANS fp8wide_table fp8wide_proposal --fp8 --rows 8 \
                   --shapes "${WIDE_SHAPES:-gate_up_silu,down}"
                 MODEL_ARGS=() ;;
    prefill) step prefill_attention 300 python3 bench/prefill_attention.py --out "$OUT/prefill_attention.json"
             grep -E '^\{"case"' "$OUT/prefill_attention.txt" | cut -c1-600 ;;
    norm) for round in 1 2; do
            for on in 0 1; do
              step "norm${on}_r$round" 60 env WARD_NORM_GEMV=$on python3 -m ward bench offline \
                --out "$OUT/norm${on}_r$round" --workloads latency,batch1
            done
          done ;;
    argmax) for round in 1 2; do
              for on in 0 1; do
                step "argmax${on}_r$round" 110 env WARD_TRITON_ARGMAX=$on python3 -m ward bench offline \
                  --out "$OUT/argmax${on}_r$round" --workloads latency,batch1,offline_256_256
              done
            done ;;
    ctxgraphs) step ctx_tests 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu \
                 tests/test_decode_context_graphs.py tests/test_kernels.py -k "context or attention or graph"
               tail -3 "$OUT/ctx_tests.txt"
               step attention_short 120 python3 bench/attention_splits.py --batches 1,8 \
                 --contexts 100,160,600,u512-768 --variants auto,s1,s2,s4,s8,s16
               grep -A12 '^contexts batch' "$OUT/attention_short.txt"
               for round in 1 2; do
                 for on in 0 1; do
                   step "ctx${on}_r$round" 70 env WARD_DECODE_CONTEXT_GRAPHS=$on python3 -m ward bench offline \
                     --out "$OUT/ctx${on}_r$round" --workloads latency,batch1
                 done
               done ;;
    tunable) step gemm_tunable 240 python3 bench/gemm_tunable.py --out "$OUT/gemm_tunable.json"
             tail -12 "$OUT/gemm_tunable.txt" ;;
    *) echo "unknown step $s" >&2 ;;
  esac
done
