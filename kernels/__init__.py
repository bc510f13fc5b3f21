"""Backends: the same ops behind one interface, chosen per run (``--backend torch|triton|cuda``).

    ops = get_backend("torch")
    ops.layer_norm(x, weight, bias, eps=1e-5)            # over the last dim
    ops.add_layer_norm(x, residual, weight, bias, eps)   # (LN(x + residual), x + residual)
    ops.attention(q, k, v, causal=True)                  # (B, H, T, D), scale 1/sqrt(D)
    ops.feedforward(x, w_in, b_in, w_out, b_out)         # gelu_tanh(x W_in^T + b_in) W_out^T + b_out
    ops.executed("attention", B=.., H=.., T=.., D=..)    # {row: (fwd_flops, bwd_flops)} or None

``executed`` tells the FLOP ledger what the backend's kernels really compute for an op and a
shape (whole tiles on the causal diagonal, recomputation in backward, padding); ``None`` means
"exactly the model view" (engine/flops.py).  Every backend is differentiable end to end.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from .attention import attention_executed_ref, attention_ref
from .ffn import feedforward_ref
from .layernorm import add_layer_norm_ref, layer_norm_ref

BACKENDS = ("torch", "triton", "cuda")


def _executed_torch(op, **shape):
    if op == "attention":
        return attention_executed_ref(**shape)
    return None


@dataclass(frozen=True)
class Backend:
    name: str
    layer_norm: Callable
    add_layer_norm: Callable
    attention: Callable
    feedforward: Callable
    executed: Callable[..., Optional[dict]] = _executed_torch


def _torch_backend():
    return Backend(
        name="torch",
        layer_norm=layer_norm_ref,
        add_layer_norm=add_layer_norm_ref,
        attention=attention_ref,
        feedforward=feedforward_ref,
        executed=_executed_torch,
    )


def _triton_backend():
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError("backend 'triton' needs the triton package (pip install triton==3.6.0)") from e
    from . import triton_backend

    return triton_backend.make_backend(Backend)


def _cuda_backend():
    from . import cuda_backend

    return cuda_backend.make_backend(Backend)


_FACTORIES = {"torch": _torch_backend, "triton": _triton_backend, "cuda": _cuda_backend}
_CACHE: dict = {}


def get_backend(name: str) -> Backend:
    """Return the backend called ``name``; a ValueError names the choices for an unknown one."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name not in _CACHE:
        _CACHE[name] = _FACTORIES[name]()
    return _CACHE[name]


__all__ = [
    "BACKENDS", "Backend", "get_backend",
    "layer_norm_ref", "add_layer_norm_ref", "attention_ref", "feedforward_ref",
]
