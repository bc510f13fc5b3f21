"""What every kernel benchmark shares: measured peaks, timing, row dicts, the results file.

Work models are stated in each bench_<op>.py; this module turns (ms, FLOPs, bytes) into the
row format of docs/ARCHITECTURE.md ("File formats") and saves
``{"device", "torch", "triton", "peak": {"tflops_bf16", "copy_gbps"}, "rows": [...]}``.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from flopscale.fileio import atomic_write_json

# do_bench budgets in ms: short, because the whole GPU check has ~4 minutes.
WARMUP_MS, REP_MS = 10, 50


def bench_ms(fn) -> float:
    """Median milliseconds of fn() (triton.testing.do_bench clears L2 between runs)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median"))


def measure_peak(device="cuda") -> dict:
    """The roofline this run is judged against, measured once on this GPU.

    tflops_bf16: an 8192^3 bf16 cuBLAS matmul, 2*8192^3 FLOPs (multiply-add = 2).
    copy_gbps: a 1 GiB device-to-device copy, read + write = 2 GiB moved.
    """
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b)
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms_copy = bench_ms(lambda: dst.copy_(src))
    del a, b, src, dst
    return {"tflops_bf16": 2 * n ** 3 / ms / 1e9, "copy_gbps": 2 * (1 << 30) / ms_copy / 1e6}


def make_row(op, backend, shape, dtype, pass_, ms, flops, nbytes, peak) -> dict:
    tflops = flops / ms / 1e9 if flops else None
    gbps = nbytes / ms / 1e6 if nbytes else None
    return {
        "op": op, "backend": backend, "shape": dict(shape), "dtype": str(dtype).replace("torch.", ""),
        "pass": pass_, "ms": ms, "tflops": tflops, "gbps": gbps,
        "fraction_of_peak": tflops / peak["tflops_bf16"] if tflops else None,
        "fraction_of_bandwidth": gbps / peak["copy_gbps"] if gbps else None,
        "speedup_vs_eager": None, "speedup_vs_sdpa": None,
    }


def fill_speedups(rows: list) -> list:
    """speedup_vs_eager against backend 'torch', speedup_vs_sdpa against the faster SDPA backend,
    for the same op, shape, dtype and pass."""
    def key(r):
        return (r["op"], json.dumps(r["shape"], sort_keys=True), r["dtype"], r["pass"])

    eager, sdpa = {}, {}
    for r in rows:
        if r["backend"] == "torch":
            eager[key(r)] = r["ms"]
        if r["backend"].startswith("sdpa-"):
            sdpa[key(r)] = min(sdpa.get(key(r), float("inf")), r["ms"])
    for r in rows:
        if key(r) in eager:
            r["speedup_vs_eager"] = eager[key(r)] / r["ms"]
        if key(r) in sdpa:
            r["speedup_vs_sdpa"] = sdpa[key(r)] / r["ms"]
    return rows


def backends_to_try() -> dict:
    """Our two kernel backends by name; 'cuda' is left out cleanly when it cannot load."""
    from flopscale.kernels import get_backend

    out = {"triton": get_backend("triton")}
    try:
        out["cuda"] = get_backend("cuda")
    except Exception as e:  # not built, no extension, no GPU arch: skip, say why once
        print(f"bench: skipping backend 'cuda' ({type(e).__name__}: {e})".splitlines()[0], file=sys.stderr)
    return out


def try_run(rows, name, fn):
    """Append fn()'s rows; one provider failing (OOM, no kernel for this arch) loses only itself."""
    try:
        rows.extend(fn())
    except Exception as e:
        print(f"bench: {name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        torch.cuda.empty_cache()


def time_passes(fwd, inputs, grad) -> dict:
    """ms of the forward, the backward alone (graph kept), and forward+backward."""
    out = {"fwd": bench_ms(fwd)}
    y = fwd()
    y = y[0] if isinstance(y, tuple) else y
    out["bwd"] = bench_ms(lambda: torch.autograd.grad(y, inputs, grad, retain_graph=True))

    def both():
        z = fwd()
        z = z[0] if isinstance(z, tuple) else z
        torch.autograd.grad(z, inputs, grad)

    out["fwd+bwd"] = bench_ms(both)
    return out


def results_document(peak, rows) -> dict:
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "peak": peak, "rows": rows}


def save(doc, path) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, doc, indent=1)


def print_table(rows, file=sys.stdout) -> None:
    hdr = f"{'op':<10} {'backend':<11} {'shape':<34} {'pass':<8} {'ms':>8} {'TFLOP/s':>8} {'GB/s':>7} {'%peak':>6} {'%bw':>5} {'xeager':>7} {'xsdpa':>6}"
    print(hdr, file=file)

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    for r in rows:
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items())
        print(f"{r['op']:<10} {r['backend']:<11} {shape:<34} {r['pass']:<8} {r['ms']:>8.3f} "
              f"{f(r['tflops'], '8.1f'):>8} {f(r['gbps'], '7.0f'):>7} "
              f"{f(r['fraction_of_peak'] and 100 * r['fraction_of_peak'], '6.1f'):>6} "
              f"{f(r['fraction_of_bandwidth'] and 100 * r['fraction_of_bandwidth'], '5.1f'):>5} "
              f"{f(r['speedup_vs_eager'], '7.2f'):>7} {f(r['speedup_vs_sdpa'], '6.2f'):>6}", file=file)
