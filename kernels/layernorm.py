"""LayerNorm over the last dimension, with an optional fused residual add.

Reference first (the ``torch`` backend, the tests and the benchmarks all call it); the Triton
kernels, launchers and autograd Function follow below it.
"""

import torch
import torch.nn.functional as F


def layer_norm_ref(x, weight, bias, eps=1e-5, upcast=False):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim.  x: (..., C)."""
    dtype = x.dtype
    if upcast:
        x, weight, bias = x.double(), weight.double(), bias.double()
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return y.to(dtype) if upcast else y


def add_layer_norm_ref(x, residual, weight, bias, eps=1e-5, upcast=False):
    """The pre-LN block's ``s = x + residual; y = LN(s)``.  Returns (y, s)."""
    dtype = x.dtype
    if upcast:
        x, residual = x.double(), residual.double()
    s = x + residual
    y = layer_norm_ref(s, weight, bias, eps, upcast=upcast)
    return (y.to(dtype), s.to(dtype)) if upcast else (y, s)
