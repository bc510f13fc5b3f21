"""What the ops' ``torch.library`` custom ops share (the ops themselves live in their op files).

    from flopscale.kernels.library import compiling, flop_formula
    torch.ops.flopscale.triton_attention_fwd(q, k, v, True)     # one node to torch.compile

Every Triton and CUDA launcher pair is registered as a custom op in the ``flopscale`` namespace
(``<backend>_<op>_fwd`` / ``_bwd``), each with a fake implementation (shapes and dtypes only, so
torch.compile and CUDA graphs trace through it as one opaque node) and a FLOP formula for
``torch.utils.flop_counter.FlopCounterMode`` (its matmul FLOPs as the kernels execute them:
whole tiles, the same numbers the ledger's executed view books, from an independent formula
over the shapes and the tiles the launch ran with).

Two ways in, one numerical path:

* eager: the op's autograd Function captures the open ledgers in its forward and calls the
  custom ops under them (``accounting.scoped``), so backward counts land in the forward's
  ledgers whenever autograd runs the backward (the deferred-backward rule of engine/flops.py);
* compiled (``compiling()``): the fwd op with ``register_autograd`` (a Function cannot keep
  Python state through torch.compile); its backward op books into ``accounting.backward_sinks()``,
  the open ledgers or those of the forward whose backward is running.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

NAMESPACE = "flopscale"


def compiling() -> bool:
    """True while torch.compile (Dynamo) traces: ops take their custom-op path."""
    return torch.compiler.is_compiling()


def flop_formula(op):
    """Register ``fn(*shapes_and_args, out_shape=...)`` as ``op``'s FLOPs for FlopCounterMode
    (tensors arrive as their shapes)."""
    return register_flop_formula(op)
