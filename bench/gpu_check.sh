#!/usr/bin/env bash
# Triton part of the GPU check: GPU tests (bf16, real sizes) and the kernel benchmarks.
#
#   OUT=/path/to/out bash bench/gpu_check.sh        # from the repository root, on a CUDA machine
#
# Budget ~4 minutes: tests ~1 min (Triton compile + autotune), benchmarks ~2-3 min.  Every part
# is guarded (|| true, timeout) so one failure keeps the rest; logs and JSON land in $OUT.
set -u
OUT=${OUT:-/tmp/flopscale-gpu-check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

# 1. Importable as flopscale.*: keep an existing install (the CUDA part may have built _C).
if ! $PY -c "import flopscale.kernels, flopscale.bench" 2>/dev/null; then
  FLOPSCALE_BUILD_CUDA=${FLOPSCALE_BUILD_CUDA:-0} $PY -m pip install --no-deps --no-build-isolation -e . \
    > "$OUT/triton_pip_install.log" 2>&1 || echo "pip install failed (see triton_pip_install.log)"
fi
$PY - <<'PY' 2>&1 | tee "$OUT/triton_env.txt" || true
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
PY

# 2. GPU tests: bf16 at real sizes, instrumented FLOP counts on the GPU.
timeout 150 $PY -m pytest -m gpu -q -rs tests/test_attention.py tests/test_layernorm.py tests/test_ffn.py \
  > "$OUT/triton_gpu_tests.log" 2>&1 || true
tail -n 3 "$OUT/triton_gpu_tests.log"

# 3. Benchmarks: results document into $OUT and into bench/results/<gpu>.json.
NAME=$($PY -c "import torch,re; print(re.sub(r'[^a-z0-9]+','_',torch.cuda.get_device_name().lower()).strip('_'))" 2>/dev/null || echo gpu)
timeout 240 $PY -m flopscale.bench.cli --op all --json "$OUT/bench_${NAME}.json" \
  > "$OUT/triton_bench.log" 2>&1 || true
mkdir -p bench/results && cp "$OUT/bench_${NAME}.json" "bench/results/${NAME}.json" 2>/dev/null || true

# 4. Summary last: the issue targets as ratios measured in this run.
$PY -m flopscale.bench.summary "$OUT/bench_${NAME}.json" 2>&1 | tee "$OUT/triton_summary.txt" || true
