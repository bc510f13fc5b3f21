"""Backends: the same ops behind one interface, chosen per run (``--backend torch|triton|cuda``).

    ops = get_backend("torch")
    ops.layer_norm(x, weight, bias, eps=1e-5)            # over the last dim
    ops.add_layer_norm(x, residual, weight, bias, eps)   # (LN(x + residual), x + residual)
    ops.attention(q, k, v, causal=True)                  # (B, H, T, D), scale 1/sqrt(D)
    ops.feedforward(x, w_in, b_in, w_out, b_out)         # gelu_tanh(x W_in^T + b_in) W_out^T + b_out
    ops.describe()                                       # {"backend", "options", what it runs}

    ops = get_backend("cuda", {"attention": "mma_sync"})  # kernel choices: BACKEND_OPTIONS

The executed view of the FLOP ledger (engine/flops.py) comes from one of two places per op:

* ``books``: the ops (of "layernorm", "attention", "feedforward") whose launches book their
  executed rows themselves, from the tile autotune picked (kernels/accounting.py);
* ``executed(op, **shape)``: a shape-only override, {row: (fwd, bwd)}, for the other ops, or
  ``None``: "exactly the model view".  The eager reference's full T x T attention is one.

Kernel variants a user may pick are options of the backend, recorded with the run, never
environment variables: ``BACKEND_OPTIONS`` declares them, first value the default.  Every
backend is differentiable end to end.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

from .attention import attention_eager, attention_executed_ref, attention_ref
from .ffn import feedforward_ref
from .layernorm import add_layer_norm_ref, layer_norm_ref

BACKENDS = ("torch", "triton", "cuda")

# {backend: {option: (allowed values, the default first)}}: the one home of kernel choices.
# A run's TrainConfig carries one field per option, named "<backend>_<option>"
# (``option_fields``); ``kernel_options_for`` turns those fields into a backend's options.
BACKEND_OPTIONS = {
    "torch": {},
    "triton": {
        # auto: tensor-descriptor (TMA) loads where they apply (16-bit, Hopper+), else pointers;
        # pointer: pointer loads everywhere (the escape hatch, e.g. a Triton TMA regression).
        "ffn_loads": ("auto", "pointer"),
    },
    "cuda": {
        # auto: the wgmma kernels on Hopper (with sm_90a code), else mma.sync; mma_sync: always.
        "attention": ("auto", "mma_sync"),
        # split: plain cuBLASLt GEMMs, dGELU and the bias gradients in one pass of our own;
        # lt_epilogues: cuBLASLt's DGELU_BGRAD / BGRADB epilogues instead.
        "ffn_backward": ("split", "lt_epilogues"),
    },
}


def _no_override(op, **shape):
    return None


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
    executed: Callable[..., Optional[dict]] = _no_override
    books: frozenset = frozenset()  # ops whose executed rows their launches book
    options: tuple = ()  # ((option, value), ...), every declared option, defaults filled in
    describer: Callable[[], dict] = field(default=dict, repr=False)

    def describe(self) -> dict:
        """What this backend runs: its name, its options and the kernels they resolve to (the
        cuda attention kernel, the Triton autotune choices made so far).  For config.json."""
        return {"backend": self.name, "options": dict(self.options), **self.describer()}


def resolve_options(name: str, options=None) -> tuple:
    """``options`` ({option: value} or None) checked against BACKEND_OPTIONS[name], defaults
    filled in, as a sorted tuple of pairs (hashable: the backend cache's key)."""
    declared = BACKEND_OPTIONS[name]
    options = dict(options or {})
    for opt, value in options.items():
        if opt not in declared:
            known = ", ".join(f"{o} ({'|'.join(v)})" for o, v in declared.items()) or "none"
            raise ValueError(f"backend {name!r} has no option {opt!r}; its options: {known}")
        if value not in declared[opt]:
            raise ValueError(f"backend {name!r} option {opt}={value!r} is not one of {', '.join(declared[opt])}")
    return tuple(sorted((opt, options.get(opt, values[0])) for opt, values in declared.items()))


def option_fields() -> dict:
    """{"<backend>_<option>": (allowed values, default first)}: the run-config fields."""
    return {f"{be}_{opt}": values for be, opts in BACKEND_OPTIONS.items() for opt, values in opts.items()}


def kernel_options_for(backend: str, **fields: str) -> dict:
    """A run's option fields ("<backend>_<option>"=value) -> the options of ``backend``.

    Fields of other backends are dropped (a run records them all, one backend uses its own);
    a field that names no declared option, or a bad value, is a ValueError.

        kernel_options_for("cuda", cuda_attention="mma_sync", cuda_ffn_backward="split",
                           triton_ffn_loads="auto")  ->  {"attention": "mma_sync", "ffn_backward": "split"}
    """
    if backend not in BACKEND_OPTIONS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    known = option_fields()
    out = {}
    for f, value in fields.items():
        if f not in known:
            raise ValueError(f"unknown kernel option field {f!r}; the fields: {', '.join(known)}")
        if f.startswith(backend + "_"):
            out[f[len(backend) + 1:]] = value
    resolve_options(backend, out)  # check the values now, with the backend's own message
    return out


def _torch_backend(options):
    return Backend(
        name="torch",
        layer_norm=layer_norm_ref,
        add_layer_norm=add_layer_norm_ref,
        attention=attention_eager,
        feedforward=feedforward_ref,
        executed=_executed_torch,
        options=options,
        describer=lambda: {"attention": "eager"},
    )


def _triton_backend(options):
    try:
        import triton  # noqa: F401
    except ImportError:
        raise RuntimeError("backend 'triton' needs the triton package (pip install triton==3.6.0)") from None
    from . import triton_backend

    return triton_backend.make_backend(Backend, options)


def _cuda_backend(options):
    from . import cuda_backend

    return cuda_backend.make_backend(Backend, options)


_FACTORIES = {"torch": _torch_backend, "triton": _triton_backend, "cuda": _cuda_backend}
_CACHE: dict = {}


def get_backend(name: str, options: Optional[dict] = None) -> Backend:
    """The backend called ``name`` with ``options`` (BACKEND_OPTIONS[name]; None: defaults),
    cached per (name, options).  An unknown name, option or value is a ValueError; a backend
    this machine cannot run is a RuntimeError saying what to do; each is one line."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    key = (name, resolve_options(name, options))
    if key not in _CACHE:
        _CACHE[key] = _FACTORIES[name](key[1])
    return _CACHE[key]


__all__ = [
    "BACKENDS", "BACKEND_OPTIONS", "Backend", "get_backend", "kernel_options_for", "option_fields",
    "resolve_options", "layer_norm_ref", "add_layer_norm_ref", "attention_ref", "feedforward_ref",
]
