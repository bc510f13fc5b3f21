"""Causal multi-head attention, softmax scale 1/sqrt(D).

Reference first (the ``torch`` backend, the tests and the benchmarks all call it); the Triton
flash-style kernels, launchers and autograd Function follow below it.
"""

import math

import torch


def attention_ref(q, k, v, causal=True, upcast=False):
    """Eager attention that materialises the full (T, T) score matrix.

    q, k, v: (B, H, T, D).  Returns (B, H, T, D).  Upcast computes in float64.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    T, D = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))  # (B, H, T, T)
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)
        scores = scores.masked_fill(mask, float("-inf"))
    # softmax in float32 at least: fp16/bf16 exp-sums lose too many bits over long rows
    p = torch.softmax(scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores, dim=-1)
    o = p.to(v.dtype) @ v  # (B, H, T, D)
    return o.to(dtype)


def attention_executed_ref(B, H, T, D, causal=True):
    """FLOPs the eager reference really computes: full T x T scores, masked afterwards.

    Convention: FLOPs, a multiply-add is 2.  Forward: QK^T (2*T*T*D) + PV (2*T*T*D) per (b, h).
    Backward of eager attention: dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q, four
    T x T x D matmuls = exactly 2x forward.  Softmax over all T*T elements, masked or not.
    """
    from flopscale.engine.flops import softmax_flops

    fwd = 4 * B * H * T * T * D
    return {"attention_mask": (fwd, 2 * fwd), "softmax": softmax_flops(B * H * T, B * H * T * T)}
