"""Feedforward block: ours (triton, cuda) against eager, torch.compile and bare cuBLAS matmuls.

    python -m flopscale.bench.cli --op ffn --json bench/results/h100.json

Work model (FLOPs, multiply-add = 2), the model view of engine/flops.py: forward
2*M*d_model*d_ff per projection, two projections; backward 2x forward (dX and dW of each).
Bias and GELU are left out of the FLOPs (<0.1%).  The 'cublas' rows time the same matmuls
with no bias, no GELU and no saved activation: the ceiling a fused kernel is held to.
Liger-Kernel has no GELU(tanh) MLP of this form (its GEGLU is gated), so it is not compared.

What to expect, honestly: eager here is cuBLAS plus a separate GELU/bias pass, already ~0.8x of
the bare-cuBLAS rows (H200, first GPU run), so a fused kernel can beat eager by at most ~1.25x
even at cuBLAS speed; 1.2x eager would mean matching cuBLAS' matmuls.  The meaningful target is
the ratio to the 'cublas' rows (>= 0.9x), printed after the table as "vs cublas".
"""

from __future__ import annotations

import json

import torch

from .common import backends_to_try, make_row, time_passes, try_run

ROWS = 16384
SHAPES = ((1024, 4096), (2048, 8192))
COMPILE_AT = (1024, 4096)


def work(M, d_model, d_ff):
    f = 2 * 2 * M * d_model * d_ff
    elt = 2
    fbytes = elt * (M * d_model * 2 + 2 * d_model * d_ff + 2 * M * d_ff)  # x, y, weights, pre, h
    return {"fwd": (f, fbytes), "bwd": (2 * f, 2 * fbytes), "fwd+bwd": (3 * f, 3 * fbytes)}


def _cublas(x, w_in, b_in, w_out, b_out):
    return (x @ w_in.t()) @ w_out.t()


def run(peak, device="cuda", shapes=SHAPES) -> list:
    from flopscale.kernels.ffn import feedforward_ref

    providers = {name: (lambda be: lambda *t: be.feedforward(*t))(be)
                 for name, be in backends_to_try().items()}
    providers["torch"] = feedforward_ref
    compiled = torch.compile(feedforward_ref, dynamic=False)
    providers["compile"] = compiled
    providers["cublas"] = _cublas
    rows = []
    for d_model, d_ff in shapes:
        shape = {"rows": ROWS, "d_model": d_model, "d_ff": d_ff}
        g = torch.Generator(device=device).manual_seed(0)
        mk = lambda *s, scale=1.0: (torch.randn(*s, device=device, generator=g) * scale).to(  # noqa: E731
            torch.bfloat16).requires_grad_()
        t = (mk(ROWS, d_model), mk(d_ff, d_model, scale=d_model ** -0.5), mk(d_ff, scale=0.1),
             mk(d_model, d_ff, scale=d_ff ** -0.5), mk(d_model, scale=0.1))
        dy = torch.randn(ROWS, d_model, device=device, dtype=torch.bfloat16)
        wk = work(ROWS, d_model, d_ff)
        for name, fn in providers.items():
            if name == "compile" and (d_model, d_ff) != COMPILE_AT:
                continue
            inputs = t if name != "cublas" else (t[0], t[1], t[3])

            def measure(name=name, fn=fn, inputs=inputs):
                ms = time_passes(lambda: fn(*t), inputs, dy)
                return [make_row("ffn", name, shape, torch.bfloat16, p, ms[p], *wk[p], peak)
                        for p in ms]

            try_run(rows, f"ffn {name} {shape}", measure)
    print_vs_cublas(rows)
    return rows


def print_vs_cublas(rows) -> None:
    """One line per (backend, shape, pass): time of the bare cuBLAS matmuls over ours."""
    cub = {(json.dumps(r["shape"], sort_keys=True), r["pass"]): r["ms"] for r in rows if r["backend"] == "cublas"}
    for r in rows:
        k = (json.dumps(r["shape"], sort_keys=True), r["pass"])
        if r["backend"] in ("triton", "cuda", "torch", "compile") and k in cub:
            print(f"ffn vs cublas: {r['backend']:<8} d_model={r['shape']['d_model']} d_ff={r['shape']['d_ff']} "
                  f"{r['pass']:<8} {cub[k] / r['ms']:.2f}x")
