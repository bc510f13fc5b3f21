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

# 4. Summary last: the targets of issue 4 as ratios measured in this run.
$PY - "$OUT/bench_${NAME}.json" <<'PY' 2>&1 | tee "$OUT/triton_summary.txt" || true
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"no bench results ({e}); see triton_bench.log")
rows, peak = doc["rows"], doc["peak"]
print(f"== triton summary: {doc['device']}  peak {peak['tflops_bf16']:.0f} TFLOP/s bf16, copy {peak['copy_gbps']:.0f} GB/s")
def get(op, be, p, **shape):
    for r in rows:
        if r["op"] == op and r["backend"] == be and r["pass"] == p and all(r["shape"].get(k) == v for k, v in shape.items()):
            return r
def fmt(v, f=".2f"):
    return format(v, f) if v is not None else "-"
print(f"{'target':<52} {'measured':>10} {'goal':>6}")
for T in (4096, 8192, 16384):
    r = get("attention", "triton", "fwd+bwd", T=T, D=128)
    print(f"{'attn fwd+bwd D=128 T=%d  x best SDPA' % T:<52} {fmt(r and r['speedup_vs_sdpa']):>10} {'>=1.0':>6}  ({fmt(r and r['tflops'], '.0f')} TFLOP/s)")
for C in (1024, 4096, 8192):
    r = get("layernorm", "triton", "fwd", C=C)
    print(f"{'layernorm fwd C=%d  fraction of copy bandwidth' % C:<52} {fmt(r and r['fraction_of_bandwidth']):>10} {'>=0.85':>6}")
    r = get("layernorm", "triton", "bwd", C=C)
    print(f"{'layernorm bwd C=%d  x eager' % C:<52} {fmt(r and r['speedup_vs_eager']):>10} {'>=1.2':>6}")
for dm, dff in ((1024, 4096), (2048, 8192)):
    for p in ("fwd", "fwd+bwd"):
        r = get("ffn", "triton", p, d_model=dm, d_ff=dff)
        cb = get("ffn", "cublas", p, d_model=dm, d_ff=dff)
        print(f"{'ffn %s %dx%d  x eager' % (p, dm, dff):<52} {fmt(r and r['speedup_vs_eager']):>10} {'>=1.2':>6}")
        ratio = cb["ms"] / r["ms"] if r and cb else None
        print(f"{'ffn %s %dx%d  x bare cuBLAS matmuls' % (p, dm, dff):<52} {fmt(ratio):>10} {'>=0.9':>6}")
PY
