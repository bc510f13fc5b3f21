#!/usr/bin/env bash
# End-to-end training speed on a lent GPU, one call, 8 minutes at most (each step under its own
# timeout): GPT-2 small (124M, T = 1024, bf16) and a 350M shape, `flopscale train` steps per
# backend, eager and --compile, against the nanoGPT-style reference eager and under torch.compile,
# tokens/s and MFU (the ledger's model view, every row) side by side; then a profile of one step
# of each flopscale provider at GPT-2 small (where the time goes); a short table printed last.
#
#   OUT=/tmp/out bash bench/gpu_train.sh                     # from the repository root
#   OUT=/tmp/out BACKENDS=torch,triton SKIP_350M=1 bash bench/gpu_train.sh
#
# $OUT receives train.log (everything), steps.tsv (step, exit status, seconds), train.json (the
# bench_train results document) and profile_*.txt; bench/results/<gpu>_train.json gets a copy.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/flopscale-gpu-train}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/train.log"
STEPS="$OUT/steps.tsv"
: > "$STEPS"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] == $*" | tee -a "$LOG"; }
run() {  # run TIMEOUT NAME CMD...: output into train.log, one row of steps.tsv
  local t=$1 name=$2; shift 2
  stamp "$name"
  local t1=$(date +%s)
  timeout "$t" "$@" >> "$LOG" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t1 ))" >> "$STEPS"
  return $rc
}

# 1. install (pure Python: the torch and triton backends need nothing else).  The cuda backend
#    joins when flopscale._C is already built (bench/gpu_all.sh builds it) or with BUILD_CUDA=1
#    (up to 200 s of the 8 minutes); otherwise it is left out, said in the log.
FLOPSCALE_BUILD_CUDA=0 run 60 "pip install (pure Python)" $PY -m pip install --no-deps --no-build-isolation -e .
BACKENDS=${BACKENDS:-torch,triton,cuda}
if [[ ",$BACKENDS," == *",cuda,"* ]] && ! $PY -c "import flopscale._C" 2>/dev/null; then
  if [[ -z "${BUILD_CUDA:-}" ]] || ! MAX_JOBS=14 FLOPSCALE_BUILD_CUDA=1 FLOPSCALE_CUDA_ARCHS=90a \
      run 200 "build flopscale._C (sm_90a)" $PY setup.py build_ext --inplace; then
    BACKENDS=$(echo "$BACKENDS" | tr ',' '\n' | grep -v '^cuda$' | paste -sd, -)
    stamp "no flopscale._C: timing $BACKENDS"
  fi
fi
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))" 2>/dev/null || echo unknown)

# 2. GPT-2 small, bf16: every backend eager and compiled, the reference eager and compiled,
#    interleaved windows; the chunked fused loss (no full fp32 logits at B*T = 16k x 50k)
run 270 "bench_train gpt2-small" $PY -m flopscale.bench.bench_train --device cuda --dtype bfloat16 \
  --shapes gpt2-small --backends "$BACKENDS" --compile --compile-ref --loss-impl chunked \
  --warmup 3 --steps 3 --repeats 3 --profile "$OUT/profile" --json "$OUT/train.json"

# 3. the 350M shape (gpt2-medium): the torch backend (BACKENDS_350M for more), fewer windows
if [[ -z "${SKIP_350M:-}" ]]; then
  run 130 "bench_train gpt2-medium" $PY -m flopscale.bench.bench_train --device cuda --dtype bfloat16 \
    --shapes gpt2-medium --backends "${BACKENDS_350M:-torch}" --compile --compile-ref --loss-impl chunked \
    --warmup 2 --steps 2 --repeats 3 --json "$OUT/train_350m.json"
fi

# 4. the table, last
mkdir -p bench/results
$PY - "$OUT" "$GPU" <<'PY' | tee -a "$LOG"
import json, os, shutil, sys
out, gpu = sys.argv[1], sys.argv[2]
docs = [json.load(open(p)) for p in (f"{out}/train.json", f"{out}/train_350m.json") if os.path.exists(p)]
if docs:
    merged = dict(docs[0], rows=[r for d in docs for r in d["rows"]])
    json.dump(merged, open(f"bench/results/{gpu}_train.json", "w"), indent=2)
    print(f"device {merged['device']}  (bench/results/{gpu}_train.json)")
    print(f"{'shape':<13}{'provider':<26}{'ms/step':>9}{'tok/s':>10}{'MFU':>7}{'x ref':>7}{'x ref+c':>8}")
    for r in merged["rows"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        rc = f"{r['speedup_vs_reference_compile']:.2f}" if r["speedup_vs_reference_compile"] else "-"
        print(f"{r['shape']:<13}{r['provider']:<26}{r['step_ms']:>9.1f}{r['tokens_per_s']:>10,.0f}{mfu:>7}"
              f"{r['speedup_vs_reference']:>7.2f}{rc:>8}")
print("steps (name, exit, s):")
print(open(f"{out}/steps.tsv").read())
PY
