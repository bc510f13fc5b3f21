#!/usr/bin/env bash
# Every GPU check of the project, in one call on a lent H100 / H200 (about 5-7 minutes on an H200,
# 8 at most: every step runs under its own timeout), ordered so that the most important results
# land first.  It runs, in order:
#   1. a pure-Python editable install, then flopscale._C built for sm_90a in the background
#   2. the kernel-variant lab (csrc/dev/*.cu, plain nvcc): every numbered variant in a process of
#      its own (`<lab> N`), so that a variant that hangs or traps (several were written without a
#      GPU) costs only itself; the variants the extension does not ship are tested only here
#   3. the Triton GPU tests (pytest -m gpu; skipped with SKIP_TRITON=1)
#   4. the CUDA GPU tests (pytest -m gpu tests/test_cuda_ops.py): the shipped kernels, kernel=0
#      (wgmma on sm_90a) and kernel=1 (mma.sync)
#   5. the kernel benchmarks (flopscale bench --op $BENCH_OP, default all)
#   6. training on each backend (bf16, 40 steps) and the ledger overhead
#   7. compute-sanitizer: memcheck on one small case of every op, racecheck on attention, and
#      memcheck on each lab variant not yet run on a GPU (validation only: `<lab> N check`)
#   8. a short table of every step (exit status, seconds), the lab's checks and timings, and
#      the benchmark summary, printed last
#
#   OUT=/tmp/out bash bench/gpu_all.sh          # from the repository root
#   OUT=/tmp/out SKIP_TRITON=1 BENCH_OP=attention bash bench/gpu_all.sh   # a CUDA-kernel change only
#
# $OUT receives: gpu.log (everything, with stamps), steps.tsv (one row per step), lab_<lab>_<N>.log
# (one per lab variant), bench.json (the results document of docs/ARCHITECTURE.md), train_backends.json,
# ledger.json, build.log.  bench/results/<gpu>.json gets a copy of bench.json when BENCH_OP=all.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flopscale-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/gpu.log"
STEPS="$OUT/steps.tsv"
LAB_BIN=${LAB_BIN:-/tmp/fs_dev}
mkdir -p "$LAB_BIN"
: > "$STEPS"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] == $*" | tee -a "$LOG"; }
# run TIMEOUT NAME CMD...: CMD's output into gpu.log (and into $RUN_LOG too, when set); one row of steps.tsv
run() {
  local t=$1 name=$2; shift 2
  local t1 rc
  t1=$(date +%s)
  if [ -n "${RUN_LOG:-}" ]; then
    timeout "$t" "$@" 2>&1 | tee "$RUN_LOG" >> "$LOG"; rc=${PIPESTATUS[0]}
  else
    timeout "$t" "$@" >> "$LOG" 2>&1; rc=$?
  fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t1 ))" >> "$STEPS"
  stamp "exit $rc ($name): $*"
  return 0
}

stamp "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -1
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} >> "$LOG" 2>&1

stamp "pure-Python editable install"
FLOPSCALE_BUILD_CUDA=0 run 120 "pip install (pure Python)" $PY -m pip install --no-deps --no-build-isolation -e .

stamp "building flopscale._C in the background (sm_90a)"
( export MAX_JOBS=14 FLOPSCALE_BUILD_CUDA=1 FLOPSCALE_CUDA_ARCHS=90a
  t1=$(date +%s)
  timeout 400 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  rc=$?
  echo "build exit $rc" >> "$OUT/build.log"
  printf '%s\t%s\t%s\n' "build flopscale._C (sm_90a)" "$rc" "$(( $(date +%s) - t1 ))" >> "$STEPS" ) &
BUILD_PID=$!

stamp "kernel-variant lab (plain nvcc, while the extension builds)"
# The extension's own flags that matter to code generation (setup.py's NVCC_FLAGS), so that the
# lab times the code the extension runs.
LAB_FLAGS="-O3 --use_fast_math -lineinfo -std=c++17 -Icsrc -gencode arch=compute_90a,code=sm_90a"
for src in csrc/dev/*.cu; do
  n=$(basename "$src" .cu)
  # shellcheck disable=SC2086
  run 90 "lab build $n" nvcc $LAB_FLAGS "$src" -o "$LAB_BIN/$n"
  [ -x "$LAB_BIN/$n" ] || continue
  if grep -q lab_variants "$src"; then
    for v in $("$LAB_BIN/$n" list); do RUN_LOG="$OUT/lab_${n}_$v.log" run 40 "lab $n $v" "$LAB_BIN/$n" "$v"; done
  else
    RUN_LOG="$OUT/lab_$n.log" run 60 "lab $n" "$LAB_BIN/$n"
  fi
done

if [ "${SKIP_TRITON:-0}" != 1 ]; then
  stamp "Triton GPU tests"
  run 150 "pytest -m gpu (Triton)" $PY -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_attention.py tests/test_layernorm.py tests/test_ffn.py
fi

stamp "waiting for the CUDA build"
wait $BUILD_PID
tail -n 30 "$OUT/build.log" >> "$LOG"
grep -E "error" "$OUT/build.log" | head -20 >> "$LOG"
run 30 "import flopscale._C" $PY -c "import torch; from flopscale import _C; print('extension ok:', _C.__file__, _C.attention_kernel_name(0))"

stamp "CUDA GPU tests (the shipped kernels: kernel=0 auto, kernel=1 mma.sync)"
run 150 "pytest -m gpu tests/test_cuda_ops.py" $PY -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_cuda_ops.py

stamp "kernel benchmarks"
NAME=$($PY -c "import torch,re; print(re.sub(r'[^a-z0-9]+','_',torch.cuda.get_device_name().lower()).strip('_'))" 2>/dev/null || echo gpu)
OP=${BENCH_OP:-all}
run 200 "flopscale bench --op $OP" $PY -m flopscale.bench.cli --op "$OP" --json "$OUT/bench.json"
if [ "$OP" = all ]; then mkdir -p bench/results && cp "$OUT/bench.json" "bench/results/${NAME}.json" 2>/dev/null; fi

stamp "training on each backend (bf16, 40 steps)"
BACKENDS=torch,triton,cuda; [ "${SKIP_TRITON:-0}" = 1 ] && BACKENDS=torch,cuda
run 60 "train_backends" $PY -m flopscale.bench.train_backends --device cuda --dtype bfloat16 --backends "$BACKENDS" --json "$OUT/train_backends.json"

stamp "ledger overhead on the GPU"
run 40 "bench_ledger" $PY -m flopscale.bench.bench_ledger --device cuda --reps 20 --json "$OUT/ledger.json"

stamp "compute-sanitizer"
# One cudaMalloc per tensor, so memcheck sees each tensor's true bounds (not a cached pool block).
PYTORCH_NO_CUDA_MEMORY_CACHING=1 run 60 "memcheck (all ops)" compute-sanitizer --tool memcheck --print-limit 10 $PY csrc/sanitize_cases.py all
PYTORCH_NO_CUDA_MEMORY_CACHING=1 run 60 "racecheck (attention)" compute-sanitizer --tool racecheck --print-limit 10 $PY csrc/sanitize_cases.py attention
# The lab variants not yet run on a GPU (csrc/dev/README.md), validation only.
for lv in "attention_forward 5" "attention_forward 6" "attention_forward 7" "attention_backward 5" \
          "attention_backward 7" "attention_backward 8"; do
  set -- $lv
  [ -x "$LAB_BIN/$1" ] && run 40 "memcheck lab $1 $2" compute-sanitizer --tool memcheck --print-limit 10 "$LAB_BIN/$1" "$2" check
done
[ -x "$LAB_BIN/tma_tile" ] && run 40 "memcheck lab tma_tile" compute-sanitizer --tool memcheck --print-limit 10 "$LAB_BIN/tma_tile"

stamp "done"
{
  echo
  echo "== steps (exit 124: timed out)"
  printf '%-46s %5s %6s\n' step exit seconds
  while IFS=$'\t' read -r name rc secs; do printf '%-46s %5s %6s\n' "$name" "$rc" "$secs"; done < "$STEPS"
  echo
  echo "== lab: checks failed, and timings (TFLOP/s at the lab's timing shape; csrc/dev/README.md)"
  for f in "$OUT"/lab_*.log; do
    [ -f "$f" ] || continue
    bad=$(grep -c "FAIL" "$f")
    t=$(grep -E "TFLOP/s|GB/s" "$f" | sed -E 's/.*(D= *[0-9]+).*  ([0-9.]+ ms)  (.*)/\1 \2 \3/' | tr '\n' ';')
    printf '%-32s fails %-3s %s\n' "$(basename "$f" .log)" "$bad" "$t"
  done
  echo
  echo "== tests and sanitizers"
  grep -E "^[0-9]+ (passed|failed)|passed|failed|ERROR SUMMARY|RACECHECK SUMMARY" "$LOG" | grep -vE "^D=|check T=" | tail -20
  if [ -f "$OUT/bench.json" ]; then
    echo
    echo "== benchmark summary"
    $PY -m flopscale.bench.summary "$OUT/bench.json" 2>&1 | tail -40
  fi
} | tee "$OUT/summary.txt"
