"""The issue targets as ratios measured in one results document, as a markdown table.

    python -m flopscale.bench.summary bench/results/nvidia_h200.json

Every ratio compares rows of the same run on the same GPU: attention against the best SDPA
backend (flash or cuDNN) at the same shape, LayerNorm against the measured copy bandwidth and
torch eager, the feedforward block against torch eager and a bare cuBLAS matmul pair.
"""

import json
import sys


def _row(rows, op, backend, pas, **shape):
    for r in rows:
        if r["op"] == op and r["backend"] == backend and r["pass"] == pas and \
                all(r["shape"].get(k) == v for k, v in shape.items()):
            return r
    return None


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def summarize(doc: dict) -> str:
    rows, peak = doc["rows"], doc["peak"]
    out = [f"{doc['device']}, torch {doc.get('torch')}, triton {doc.get('triton')}: measured bf16 matmul "
           f"{peak['tflops_bf16']:.0f} TFLOP/s, copy {peak['copy_gbps']:.0f} GB/s", "",
           "| target | backend | measured | goal |", "| --- | --- | --- | --- |"]
    for be in ("triton", "cuda"):
        for D in (64, 128):
            for T in (4096, 8192, 16384):
                r = _row(rows, "attention", be, "fwd+bwd", T=T, D=D)
                if r:
                    out.append(f"| attention fwd+bwd D={D} T={T}: x best SDPA ({_fmt(r['tflops'], '.0f')} TFLOP/s) "
                               f"| {be} | {_fmt(r['speedup_vs_sdpa'])} | {'>=1.0' if be == 'triton' else '>=0.8'} |")
    for be in ("triton", "cuda"):
        for C in (1024, 2048, 4096, 8192):
            f, b = _row(rows, "layernorm", be, "fwd", C=C), _row(rows, "layernorm", be, "bwd", C=C)
            cp = _row(rows, "layernorm", "copy", "fwd", C=C)
            if f:
                out.append(f"| layernorm fwd C={C}: fraction of copy bandwidth | {be} | {_fmt(f['fraction_of_bandwidth'])} | >=0.85 |")
            if f and cp:
                out.append(f"| layernorm fwd C={C}: x a same-size copy's time | {be} | {_fmt(cp['ms'] / f['ms'])} | >=0.85 |")
            if b:
                out.append(f"| layernorm bwd C={C}: x torch eager | {be} | {_fmt(b['speedup_vs_eager'])} | >=1.2 |")
    for be in ("triton", "cuda"):
        for dm, dff in ((1024, 4096), (2048, 8192)):
            for p in ("fwd", "bwd", "fwd+bwd"):
                r = _row(rows, "ffn", be, p, d_model=dm, d_ff=dff)
                cb = _row(rows, "ffn", "cublas", p, d_model=dm, d_ff=dff)
                if r:
                    out.append(f"| ffn {p} {dm}x{dff}: x torch eager | {be} | {_fmt(r['speedup_vs_eager'])} | >=1.2 |")
                if r and cb and be == "triton":
                    out.append(f"| ffn {p} {dm}x{dff}: x bare cuBLAS matmuls | {be} | {_fmt(cb['ms'] / r['ms'])} | >=0.9 |")
    return "\n".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m flopscale.bench.summary RESULTS.json")
    with open(argv[0]) as f:
        print(summarize(json.load(f)))


if __name__ == "__main__":
    main()
