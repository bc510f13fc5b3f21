"""LayerNorm: ours (triton, cuda) against eager, torch.compile and Liger-Kernel.

    python -m flopscale.bench.cli --op layernorm --json bench/results/h100.json

Memory-bound, so the work model is bytes (bf16, 2 bytes an element): forward reads x and
writes y (4*M*C) plus the fp32 mean and rstd (8*M); backward reads x, dy and writes dx
(6*M*C) plus mean, rstd.  Weight and bias traffic (C elements) is negligible and left out.
FLOPs from engine/flops.py (LN_FWD = 7, LN_BWD = 11 per element) are reported too.

A "copy" row per width times y.copy_(x) on the same (ROWS, C) tensor, the bytes of the forward
without its arithmetic: the forward's bandwidth target then reads against a copy of its own
size as well as against the 1 GiB copy that sets the card's ceiling (a 32-64 MB pass is short
enough that launch and ramp-up cost a visible share of the time).
"""

from __future__ import annotations

import torch

from flopscale.engine.flops import layernorm_flops

from .common import backends_to_try, bench_ms, make_row, time_passes, try_run

ROWS = 16384
WIDTHS = (1024, 2048, 4096, 8192)
COMPILE_AT_C = 4096


def work(M, C):
    f, b = layernorm_flops(M, C)
    return {"fwd": (f, 4 * M * C + 8 * M), "bwd": (b, 6 * M * C + 8 * M),
            "fwd+bwd": (f + b, 10 * M * C + 16 * M)}


def _liger():
    try:
        from liger_kernel.ops.layer_norm import LigerLayerNormFunction
    except Exception:
        return None
    return lambda x, w, b: LigerLayerNormFunction.apply(x, w, b, 1e-5)


def run(peak, device="cuda", widths=WIDTHS) -> list:
    from flopscale.kernels.layernorm import layer_norm_ref

    providers = {name: (lambda be: lambda x, w, b: be.layer_norm(x, w, b, 1e-5))(be)
                 for name, be in backends_to_try().items()}
    providers["torch"] = lambda x, w, b: layer_norm_ref(x, w, b, 1e-5)
    compiled = torch.compile(layer_norm_ref, dynamic=False)
    providers["compile"] = lambda x, w, b: compiled(x, w, b, 1e-5)
    if _liger() is not None:
        providers["liger"] = _liger()
    rows = []
    for C in widths:
        shape = {"rows": ROWS, "C": C}
        x = torch.randn(ROWS, C, device=device, dtype=torch.bfloat16, requires_grad=True)
        w = torch.ones(C, device=device, dtype=torch.bfloat16, requires_grad=True)
        b = torch.zeros(C, device=device, dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(x)
        wk = work(ROWS, C)
        src, dst = x.detach(), torch.empty_like(x, requires_grad=False)
        try_run(rows, f"layernorm copy {shape}",
                lambda: [make_row("layernorm", "copy", shape, torch.bfloat16, "fwd", bench_ms(lambda: dst.copy_(src)),
                                  None, 4 * ROWS * C, peak)])
        for name, fn in providers.items():
            if name == "compile" and C != COMPILE_AT_C:
                continue

            def measure(name=name, fn=fn):
                ms = time_passes(lambda: fn(x, w, b), (x, w, b), dy)
                return [make_row("layernorm", name, shape, torch.bfloat16, p, ms[p], *wk[p], peak)
                        for p in ms]

            try_run(rows, f"layernorm {name} {shape}", measure)
    return rows
