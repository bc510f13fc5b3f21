#!/usr/bin/env bash
# Every GPU check of the project in one call on a lent H100/H200 (about 5-7 minutes), ordered so
# the most important results land first; the CUDA extension builds on the CPU cores while the
# Triton tests use the GPU.
#
#   OUT=/tmp/out bash bench/gpu_all.sh          # from the repository root
#   OUT=/tmp/out SKIP_TRITON=1 BENCH_OP=attention bash bench/gpu_all.sh   # a CUDA-kernel change only
#
# $OUT receives: gpu.log (everything, with stamps), bench.json (DESIGN.md's results document),
# bench_attn_sm90_{5,6}.json (attention under FLOPSCALE_ATTN_SM90=5, 6), train_backends.json,
# ledger.json, build.log.  bench/results/<gpu>.json gets a copy of bench.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flopscale-gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/gpu.log"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] == $*" | tee -a "$LOG"; }
run() { local t=$1; shift; timeout "$t" "$@" >> "$LOG" 2>&1; local rc=$?; stamp "exit $rc: $*"; return 0; }

stamp "environment"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -1
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} >> "$LOG" 2>&1

stamp "pure-Python editable install"
FLOPSCALE_BUILD_CUDA=0 run 120 $PY -m pip install --no-deps --no-build-isolation -e .

stamp "building flopscale._C in the background (sm_90a)"
( export MAX_JOBS=14 FLOPSCALE_BUILD_CUDA=1 FLOPSCALE_CUDA_ARCHS=90a
  timeout 400 $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; echo "build exit $?" >> "$OUT/build.log" ) &
BUILD_PID=$!

stamp "kernel-variant lab (plain nvcc, while the extension builds)"
# A lab with numbered variants (`<lab> count`) runs each in a process of its own under a short
# timeout, so that a variant that hangs (new synchronization, written without a GPU) costs only itself.
for src in csrc/dev/*.cu; do
  n=$(basename "$src" .cu)
  run 60 nvcc -O3 --use_fast_math -gencode arch=compute_90a,code=sm_90a -Icsrc "$src" -o "/tmp/fs_dev_$n"
  if grep -q lab_variants "$src"; then
    for v in $(seq 1 "$(/tmp/fs_dev_$n count)"); do run 30 "/tmp/fs_dev_$n" "$v"; done
  else
    run 60 "/tmp/fs_dev_$n"
  fi
done

if [ "${SKIP_TRITON:-0}" != 1 ]; then
  stamp "Triton GPU tests"
  run 150 $PY -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_attention.py tests/test_layernorm.py tests/test_ffn.py
fi

stamp "waiting for the CUDA build"
wait $BUILD_PID
tail -n 30 "$OUT/build.log" >> "$LOG"
grep -E "error" "$OUT/build.log" | head -20 >> "$LOG"
$PY -c "import torch; from flopscale import _C; print('extension ok:', _C.__file__)" >> "$LOG" 2>&1

stamp "CUDA GPU tests"
run 90 $PY -m pytest -m gpu -q -rs -p no:cacheprovider tests/test_cuda_ops.py -k "not wsfwd and not wsall and not wsdq"
stamp "CUDA GPU tests of the warp-specialized attention (FLOPSCALE_ATTN_SM90=4, 5, 6), a process per set"
for ws in wsfwd wsall wsdq; do
  run 40 $PY -m pytest -m gpu -q -rs -x -p no:cacheprovider tests/test_cuda_ops.py -k "$ws"
done

stamp "kernel benchmarks"
NAME=$($PY -c "import torch,re; print(re.sub(r'[^a-z0-9]+','_',torch.cuda.get_device_name().lower()).strip('_'))" 2>/dev/null || echo gpu)
OP=${BENCH_OP:-all}
run 180 $PY -m flopscale.bench.cli --op "$OP" --json "$OUT/bench.json"
if [ "$OP" = all ]; then mkdir -p bench/results && cp "$OUT/bench.json" "bench/results/${NAME}.json" 2>/dev/null; fi
if [ "$OP" = all ] || [ "$OP" = attention ]; then
  for s90 in 5 6; do
    stamp "attention benchmarks under FLOPSCALE_ATTN_SM90=$s90 (warp-specialized kernels)"
    FLOPSCALE_ATTN_SM90=$s90 run 120 $PY -m flopscale.bench.cli --op attention --json "$OUT/bench_attn_sm90_$s90.json"
  done
fi

stamp "training on each backend (bf16, 40 steps)"
BACKENDS=torch,triton,cuda; [ "${SKIP_TRITON:-0}" = 1 ] && BACKENDS=torch,cuda
run 60 $PY -m flopscale.bench.train_backends --device cuda --dtype bfloat16 --backends "$BACKENDS" --json "$OUT/train_backends.json"

stamp "compute-sanitizer"
PYTORCH_NO_CUDA_MEMORY_CACHING=1 run 45 compute-sanitizer --tool memcheck --print-limit 10 $PY csrc/sanitize_cases.py all
PYTORCH_NO_CUDA_MEMORY_CACHING=1 run 45 compute-sanitizer --tool racecheck --print-limit 10 $PY csrc/sanitize_cases.py attention
for s90 in 5 6; do
  FLOPSCALE_ATTN_SM90=$s90 PYTORCH_NO_CUDA_MEMORY_CACHING=1 run 45 compute-sanitizer --tool memcheck --print-limit 10 $PY csrc/sanitize_cases.py attention
done

stamp "ledger overhead on the GPU"
run 40 $PY -m flopscale.bench.bench_ledger --device cuda --reps 20 --json "$OUT/ledger.json"
stamp "done"
grep -E "passed|failed|error|ERROR SUMMARY|RACECHECK SUMMARY|exit [1-9]" "$LOG" | tail -40
