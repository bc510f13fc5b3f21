#!/usr/bin/env bash
# Compile every .cu file under csrc/ with nvcc for sm_80 and sm_90a with `-Xptxas -v`, and fail on
# any compile error or any register spill: the extension's sources (csrc/<op>/*.cu, what setup.py
# builds) and the kernel-variant lab (csrc/dev/*.cu, standalone programs), with the extension's
# nvcc flags (setup.py's NVCC_FLAGS, read from there).
# Prints one row per kernel: registers, static shared memory, stack, spill stores/loads.
# Needs only nvcc (no torch, no GPU); runs in about a minute on 2 cores.
#
#   bash .ci/check_cuda.sh                    # all files, archs "80 90a", 2 jobs
#   FLOPSCALE_CHECK_ARCHS=80 bash .ci/check_cuda.sh csrc/attention/attention.cu
#
# Environment:
#   NVCC                           nvcc to use (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)
#   FLOPSCALE_CHECK_ARCHS          space-separated archs (default "80 90a")
#   FLOPSCALE_CHECK_JOBS           parallel nvcc processes (default 2)
#   FLOPSCALE_CUBLAS_HOME          folder with include/cublasLt.h, for csrc/ffn/ (else searched:
#                                  the CUDA toolkit, the nvidia-cublas wheel installed or on disk)
#   FLOPSCALE_CHECK_REQUIRE_CUBLAS=1  fail, rather than skip with a warning, when no cublasLt.h
set -uo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
ARCHS=${FLOPSCALE_CHECK_ARCHS:-"80 90a"}
JOBS=${FLOPSCALE_CHECK_JOBS:-2}
# The extension's nvcc flags, read from setup.py's NVCC_FLAGS (their one home) so the registers
# reported are the ones it gets; -std=c++17 (torch's BuildExtension adds its own) and -Icsrc as
# setup.py's include_dirs.
EXT_FLAGS=$(python3 - <<'PY' 2>/dev/null
import ast
for node in ast.parse(open("setup.py").read()).body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NVCC_FLAGS" for t in node.targets):
        print(" ".join(ast.literal_eval(node.value)))
PY
)
if [ -z "$EXT_FLAGS" ]; then
  echo "check_cuda: FAIL: could not read NVCC_FLAGS from setup.py (needs python3)" >&2
  exit 1
fi
FLAGS="$EXT_FLAGS -std=c++17 -Icsrc"

if [ ! -x "$NVCC" ]; then
  echo "check_cuda: FAIL: nvcc not found (set NVCC)" >&2
  exit 1
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ---- cuBLASLt's header, for csrc/ffn/ ---------------------------------------------------------
find_cublas_include() {
  local nvcc_root cand
  nvcc_root=$(cd "$(dirname "$NVCC")/.." && pwd)
  for cand in "${FLOPSCALE_CUBLAS_HOME:-}/include" "$nvcc_root/include" "$nvcc_root"/targets/*/include; do
    [ -f "$cand/cublasLt.h" ] && { echo "$cand"; return; }
  done
  if command -v python3 >/dev/null; then
    cand=$(python3 - <<'PY' 2>/dev/null
import glob, importlib.util, os
spec = importlib.util.find_spec("nvidia")
for base in (spec.submodule_search_locations or []) if spec else []:
    for inc in sorted(glob.glob(os.path.join(base, "*", "include"))):
        if os.path.isfile(os.path.join(inc, "cublasLt.h")):
            print(inc); raise SystemExit
PY
)
    [ -n "$cand" ] && { echo "$cand"; return; }
    # The nvidia-cublas wheel lying on disk (this workplace's machines keep one): unpack the
    # headers alone (a few hundred KB; the wheel's libraries stay zipped).
    for whl in /opt/pypi-more/files/nvidia_cublas-*.whl; do
      [ -f "$whl" ] || continue
      python3 - "$whl" "$WORK/cublas" <<'PY' && { echo "$WORK/cublas/include"; return; }
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "include"), exist_ok=True)
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if "/include/" in n and n.endswith(".h")]
    for n in names:
        with open(os.path.join(out, "include", os.path.basename(n)), "wb") as f:
            f.write(z.read(n))
sys.exit(0 if any(n.endswith("cublasLt.h") for n in names) else 1)
PY
    done
  fi
}
CUBLAS_INC=$(find_cublas_include)

# The extension's sources by setup.py's rule (csrc/<op>/*.cu outside csrc/dev/), then the lab's.
if [ $# -gt 0 ]; then FILES="$*"; else FILES="$(ls csrc/*/*.cu | grep -v '^csrc/dev/' | sort) $(ls csrc/dev/*.cu | sort)"; fi
stray=$(find csrc -name '*.cu' | grep -vE '^csrc/[^/]+/[^/]+\.cu$' || true)
if [ -n "$stray" ]; then
  echo "check_cuda: FAIL: .cu files that neither setup.py nor the lab picks up: $stray" >&2
  exit 1
fi
echo "check_cuda: flags: $FLAGS"
echo "check_cuda: extension: $(echo $FILES | tr ' ' '\n' | grep -v '^csrc/dev/' | tr '\n' ' ')"
echo "check_cuda: lab:       $(echo $FILES | tr ' ' '\n' | grep '^csrc/dev/' | tr '\n' ' ')"
: > "$WORK/jobs"
for f in $FILES; do for a in $ARCHS; do echo "$f $a" >> "$WORK/jobs"; done; done

compile_one() {
  local f=$1 a=$2 tag extra=""
  tag=$(echo "$f" | tr '/' '_').$a
  if grep -q 'cublasLt.h' "$f"; then
    if [ -z "$CUBLAS_INC" ]; then echo skip > "$WORK/$tag.status"; return 0; fi
    extra="-I$CUBLAS_INC"
  fi
  # shellcheck disable=SC2086
  "$NVCC" $FLAGS $extra -gencode "arch=compute_$a,code=sm_$a" -Xptxas -v -c "$f" -o "$WORK/$tag.o" \
    > "$WORK/$tag.log" 2>&1
  echo $? > "$WORK/$tag.status"
}
export -f compile_one
export NVCC FLAGS CUBLAS_INC WORK

start=$(date +%s)
xargs -P "$JOBS" -L1 bash -c 'compile_one "$0" "$1"' < "$WORK/jobs"

demangle() { if command -v c++filt >/dev/null; then c++filt; else cat; fi; }

fail=0
printf '%-34s %-5s %-62s %5s %7s %6s %6s %6s\n' file arch kernel regs smem stack spill_st spill_ld
while read -r f a; do
  tag=$(echo "$f" | tr '/' '_').$a
  status=$(cat "$WORK/$tag.status" 2>/dev/null || echo 1)
  if [ "$status" = skip ]; then
    echo "check_cuda: WARNING: skipped $f (sm_$a): no cublasLt.h found (set FLOPSCALE_CUBLAS_HOME)"
    [ "${FLOPSCALE_CHECK_REQUIRE_CUBLAS:-0}" = 1 ] && fail=1
    continue
  fi
  if [ "$status" != 0 ]; then
    echo "check_cuda: FAIL: $f does not compile for sm_$a:"
    grep -E 'error|Error' "$WORK/$tag.log" | head -20 | sed 's/^/    /'
    fail=1
    continue
  fi
  # ptxas -v prints, per kernel: "Compiling entry function 'NAME' for 'sm_XX'", then
  # "N bytes stack frame, N bytes spill stores, N bytes spill loads", then "Used N registers, ... N bytes smem".
  awk -v file="$f" -v arch="$a" '
    /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); name = substr($0, RSTART + 1, RLENGTH - 2) }
    /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
    /Used [0-9]+ registers/ {
      if (name == "") next
      regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART, RLENGTH); sub(/ bytes smem/, "", smem) }
      print file "\t" arch "\t" name "\t" regs "\t" smem "\t" stack "\t" st "\t" ld
      name = ""
    }' "$WORK/$tag.log" > "$WORK/$tag.rows"
  if [ ! -s "$WORK/$tag.rows" ]; then
    printf '%-34s %-5s %-62s\n' "$f" "$a" "(host code only: no kernels)"
  fi
  while IFS=$'\t' read -r file arch name regs smem stack st ld; do
    pretty=$(echo "$name" | demangle | sed -e 's/(anonymous namespace):://g' -e 's/(.*//' -e 's/flopscale:://g' -e 's/attn:://; s/ln:://' \
             -e 's/__nv_bfloat16/bf16/g; s/__half/fp16/g')
    printf '%-34s %-5s %-62s %5s %7s %6s %6s %6s\n' "$file" "$arch" "${pretty:0:62}" "$regs" "$smem" "$stack" "$st" "$ld"
    if [ "$st" != 0 ] || [ "$ld" != 0 ]; then
      echo "check_cuda: FAIL: kernel $pretty in $file spills registers on sm_$arch ($st bytes stored, $ld loaded)"
      fail=1
    fi
  done < "$WORK/$tag.rows"
done < "$WORK/jobs"
echo "(smem: static shared memory per CTA; the attention kernels add dynamic shared memory at launch:"
echo " mma.sync fwd 27648 B (D 64) / 52224 B (D 128), bwd 46592 B (D 64) / 75008 B (D 128, two Q/dO stages);"
echo " sm90 (wgmma, lab variant 4, shipped) fwd 115712 B / 230400 B, bwd 134144 B / 149504 B (1 CTA per SM);"
echo " lab only: sm90 warp-specialized (384 threads, setmaxnreg 24 / 240) fwd 115792 B / 230480 B, bwd 200760 B / 199224 B;"
echo " LayerNorm bwd up to 8*C B when a CTA holds several rows.)"

elapsed=$(( $(date +%s) - start ))
if [ "$fail" != 0 ]; then
  echo "check_cuda: FAILED (${elapsed}s)"
  exit 1
fi
echo "check_cuda: OK: $(wc -l < "$WORK/jobs") compiles, no errors, no spills (${elapsed}s)"
