"""The feedforward block: gelu_tanh(x @ w_in.T + b_in) @ w_out.T + b_out.

Weights use torch.nn.Linear's layout (out_features, in_features).  Reference first; the fused
Triton kernels (bias+GELU in the first matmul's epilogue, dGELU in the backward's) follow.
"""

import torch
import torch.nn.functional as F


def feedforward_ref(x, w_in, b_in, w_out, b_out, upcast=False):
    """x: (..., d_model), w_in: (d_ff, d_model), w_out: (d_model, d_ff)."""
    dtype = x.dtype
    if upcast:
        x, w_in, b_in, w_out, b_out = (t.double() for t in (x, w_in, b_in, w_out, b_out))
    h = F.gelu(F.linear(x, w_in, b_in), approximate="tanh")
    y = F.linear(h, w_out, b_out)
    return y.to(dtype) if upcast else y
