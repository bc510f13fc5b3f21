"""Causal attention: ours (triton, cuda) against eager, torch.compile and SDPA (flash, cuDNN).

    python -m flopscale.bench.cli --op attention --json bench/results/h100.json

Work model (FLOPs, multiply-add = 2), as FlashAttention reports it: causal-halved
4*B*H*T^2*D/2 forward (QK^T and PV over the lower triangle), 2.5x that backward (five
T x T x D matmuls, one of them the recompute of S), 3.5x for forward+backward.  Bytes: Q, K, V
read and O written once forward; Q, K, V, O, dO read and dQ, dK, dV written backward.
B*T is fixed at 16k tokens; d_model = H*D = 2048; bf16.

Reading the triton backward rows: our backward has no atomics, so its dK/dV kernel and its dQ
kernel each recompute S and dP: 7 T x T x D matmuls where FlashAttention-2/3 and cuDNN do 5
(dQ accumulated with atomics).  The TFLOP/s above use the 5-matmul convention for every
provider, so our executed rate is 7/5 of the printed one (HFU; see attention_executed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import backends_to_try, make_row, time_passes, try_run

TOKENS = 16384
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
D_MODEL = 2048
EAGER_MAX_T = 4096    # eager materialises B*H*T*T fp32 scores: skip past this (memory, time)
COMPILE_AT_T = 2048   # torch.compile once per head dim: each compile costs ~30 s


def work(B, H, T, D):
    f = 4 * B * H * T * T * D // 2
    elt = 2  # bf16
    return {"fwd": (f, 4 * B * H * T * D * elt), "bwd": (5 * f // 2, 8 * B * H * T * D * elt),
            "fwd+bwd": (7 * f // 2, 12 * B * H * T * D * elt)}


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return fn


def run(peak, device="cuda", seq_lens=SEQ_LENS, head_dims=HEAD_DIMS) -> list:
    from torch.nn.attention import SDPBackend

    from flopscale.kernels.attention import attention_ref

    providers = {name: (lambda be: lambda q, k, v: be.attention(q, k, v, causal=True))(be)
                 for name, be in backends_to_try().items()}
    providers["sdpa-flash"] = _sdpa(SDPBackend.FLASH_ATTENTION)
    providers["sdpa-cudnn"] = _sdpa(SDPBackend.CUDNN_ATTENTION)
    providers["torch"] = lambda q, k, v: attention_ref(q, k, v, causal=True)
    compiled = torch.compile(attention_ref, dynamic=False)
    providers["compile"] = lambda q, k, v: compiled(q, k, v, causal=True)
    rows = []
    for D in head_dims:
        H = D_MODEL // D
        for T in seq_lens:
            B = max(1, TOKENS // T)
            shape = {"B": B, "H": H, "T": T, "D": D, "causal": True}
            q, k, v = (torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            do = torch.randn_like(q)
            w = work(B, H, T, D)
            for name, fn in providers.items():
                if name == "torch" and T > EAGER_MAX_T or name == "compile" and T != COMPILE_AT_T:
                    continue

                def measure(name=name, fn=fn):
                    ms = time_passes(lambda: fn(q, k, v), (q, k, v), do)
                    return [make_row("attention", name, shape, torch.bfloat16, p, ms[p], *w[p], peak)
                            for p in ms]

                try_run(rows, f"attention {name} {shape}", measure)
            del q, k, v, do
            torch.cuda.empty_cache()
    return rows
