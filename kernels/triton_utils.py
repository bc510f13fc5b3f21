"""What the Triton sections of attention.py, layernorm.py and ffn.py share (the factory that
assembles them into a backend is triton_backend.py).

    from flopscale.kernels.triton_utils import count_flops
    counts = count_flops(lambda c: attention(q, k, v, counter=c), device, grad=do)   # instrumented

Without a GPU, set ``TRITON_INTERPRET=1`` before anything imports triton: the kernels then run
under Triton's interpreter on CPU tensors (how CI checks them).
"""

import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # the torch backend and the references must import without triton
    class _NoTriton:
        """Stands in for ``triton`` and ``tl`` so the kernel files import; nothing runs."""

        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else self

    triton = tl = _NoTriton()
    HAVE_TRITON = False

# Under the interpreter autotuning is pointless and slow: each op uses one small fixed tile.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _fix_interpreter():
    """Two fixes to Triton 3.6's interpreter (CPU only; compiled kernels are untouched).

    1. It turns a runtime loop bound into a Python int with ``int(array_of_one)``, which
       numpy >= 2.4 refuses ("only 0-dimensional arrays can be converted"), so any
       ``tl.range(start, stop)`` over runtime values fails.  Take the element instead.
    2. It casts fp32 -> bf16 by truncation, where the GPU rounds to nearest even: a one-ulp
       bias that would make bf16 outputs look worse than eager's.  Round through torch.
    """
    import numpy as np
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_flopscale", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._flopscale = True
    interpreter._patch_lang_tensor = patched

    cast = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            data = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            return interpreter.TensorHandle(data.view(torch.int16).numpy().view(np.uint16), dst_type.scalar)
        return cast(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_impl


if INTERPRET and HAVE_TRITON:
    _fix_interpreter()


@triton.jit
def mma(a, b, acc, F32_DOT: tl.constexpr):
    """acc + a @ b with fp32 accumulation.

    F32_DOT: fp32 inputs take IEEE products (torch's fp32 matmul does not use TF32 by default);
    under the interpreter 16-bit inputs are widened too, because its numpy dot mishandles bf16.
    Widening bf16/fp16 is exact, so the result matches an fp32-accumulating tensor-core dot up
    to summation order.
    """
    if F32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


def f32_dot(dtype) -> bool:
    return dtype == torch.float32 or INTERPRET


_DUMMY: dict = {}


def launch_counter(device, counting):
    """The int64 counter pointer one launch gets.  Counting: a fresh zeroed one, which the
    launcher adds into the caller's counter afterwards; launches must not share the caller's,
    because autotune's reset_to_zero clears a launch's counter between its trials.  Not
    counting: one cached throwaway per device (the kernels take the pointer either way)."""
    if counting:
        return torch.zeros(1, dtype=torch.int64, device=device)
    key = str(device)
    if key not in _DUMMY:
        _DUMMY[key] = torch.zeros(1, dtype=torch.int64, device=device)
    return _DUMMY[key]


def add_count(counter, launch):
    if counter is not None:
        counter += launch


# {kernel name: {id(config): triton.Config}}: every autotune choice a launch has run with, for
# Backend.describe() (what a run records in its config.json).  Descriptive only: the FLOP
# bookings read the config from the launch itself.  Keyed by id: Config.__hash__ rebuilds a
# tuple of its kwargs (~1 us), too dear for every launch.
CHOSEN: dict = {}


def best_kwargs(kernel):
    """The config an autotuned kernel just ran with (its only config under the interpreter):
    Triton sets ``best_config`` on every launch, after the autotune cache lookup or benchmark.
    Read it right after the launch, on the launching thread."""
    cfg = kernel.best_config
    CHOSEN.setdefault(kernel.base_fn.__name__, {})[id(cfg)] = cfg
    return cfg.kwargs


def chosen_configs() -> dict:
    """{kernel name: sorted config descriptions} of the autotune choices made so far."""
    return {name: sorted(str(c) for c in cfgs.values()) for name, cfgs in sorted(CHOSEN.items())}


def count_flops(run, device, grad=None, inputs=None):
    """Run an op in instrumented mode; returns {"fwd": int, "bwd": int} counted by the kernels.

    ``run(counter)`` calls the op with ``counter=counter`` and returns its output (or a tuple
    whose first element is the output).  With ``grad`` the backward runs too, w.r.t. ``inputs``
    (default: the graph's leaves).  Attention and feedforward count their matmul FLOPs, 2 per
    multiply-add; layernorm counts its documented per-element constants (kernels/flop_counts.py).
    """
    counter = torch.zeros(1, dtype=torch.int64, device=device)
    out = run(counter)
    out = out[0] if isinstance(out, (tuple, list)) else out
    fwd = int(counter.item())  # .item() synchronises
    counter.zero_()
    bwd = 0
    if grad is not None:
        torch.autograd.backward(out, grad, inputs=inputs)
        bwd = int(counter.item())
    return {"fwd": fwd, "bwd": bwd}
