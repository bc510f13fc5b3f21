#!/usr/bin/env bash
# One-shot GPU check of the `cuda` backend, for a lent H100/H200 (about 4 minutes):
#   1. build flopscale._C for sm_90a (MAX_JOBS=16)           -> $OUT/build.log
#   2. pytest -m gpu tests/test_cuda_ops.py                  -> $OUT/pytest.log
#   3. build and run the kernel-variant lab csrc/dev/*.cu    -> $OUT/dev_<name>.log
#   4. compute-sanitizer memcheck on one small case of every op, racecheck on attention
#                                                            -> $OUT/sanitizer_{memcheck,racecheck}.log
#   5. a summary, printed last                               -> $OUT/summary.log
# Each part runs under a timeout and `|| true`, so one failure doesn't lose the rest.
#
#   bash csrc/gpu_check.sh            # from the repository root; OUT defaults to /tmp/flopscale_gpu_check
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flopscale_gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

{
  echo "== environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
  nvcc --version 2>&1 | tail -2
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1
} > "$OUT/summary.log"

# ---- 1. build ----------------------------------------------------------------------------------
stamp "building flopscale._C (sm_90a)"
( export MAX_JOBS=16 FLOPSCALE_BUILD_CUDA=1 FLOPSCALE_CUDA_ARCHS=90a
  timeout 420 $PY -m pip install -v --no-deps --no-build-isolation -e . ) > "$OUT/build.log" 2>&1 || true
if $PY -c "from flopscale import _C; print('extension ok:', _C.__file__)" >> "$OUT/build.log" 2>&1; then
  BUILD=ok
else
  BUILD=FAILED
fi
stamp "build: $BUILD"

# ---- 2. tests ----------------------------------------------------------------------------------
stamp "pytest -m gpu tests/test_cuda_ops.py"
timeout 300 $PY -m pytest -m gpu tests/test_cuda_ops.py -v -s -rs -p no:cacheprovider > "$OUT/pytest.log" 2>&1 || true

# ---- 3. the kernel-variant lab -------------------------------------------------------------------
for src in csrc/dev/*.cu; do
  name=$(basename "$src" .cu)
  stamp "dev lab: $name"
  { timeout 120 nvcc -O3 --use_fast_math -lineinfo -gencode arch=compute_90a,code=sm_90a -Icsrc "$src" \
        -o "/tmp/fs_dev_$name" && timeout 120 "/tmp/fs_dev_$name"; echo "exit: $?"; } > "$OUT/dev_$name.log" 2>&1 || true
done

# ---- 4. compute-sanitizer --------------------------------------------------------------------------
# One cudaMalloc per tensor, so memcheck sees each tensor's true bounds (not a cached pool block).
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
stamp "compute-sanitizer memcheck (all ops)"
timeout 240 compute-sanitizer --tool memcheck --print-limit 20 $PY csrc/sanitize_cases.py all \
  > "$OUT/sanitizer_memcheck.log" 2>&1 || true
stamp "compute-sanitizer racecheck (attention)"
timeout 180 compute-sanitizer --tool racecheck --print-limit 20 $PY csrc/sanitize_cases.py attention \
  > "$OUT/sanitizer_racecheck.log" 2>&1 || true
unset PYTORCH_NO_CUDA_MEMORY_CACHING

# ---- 5. summary ------------------------------------------------------------------------------------
{
  echo "== build: $BUILD"
  [ "$BUILD" = ok ] || grep -E "error|Error" "$OUT/build.log" | head -15
  echo "== pytest (tests/test_cuda_ops.py -m gpu)"
  grep -E "FAILED|ERROR" "$OUT/pytest.log" | head -20
  tail -1 "$OUT/pytest.log"
  for f in "$OUT"/dev_*.log; do
    echo "== $(basename "$f" .log)"
    grep -E "variant|exit|error" "$f" | head -20
  done
  for t in memcheck racecheck; do
    echo "== compute-sanitizer $t"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer cases done|Error|error" "$OUT/sanitizer_$t.log" | head -8
  done
  echo "== total $(( $(date +%s) - T0 ))s"
} >> "$OUT/summary.log" 2>&1
cat "$OUT/summary.log"
