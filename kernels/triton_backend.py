"""The ``triton`` backend: the Triton ops of attention.py, layernorm.py and ffn.py assembled.

    from flopscale.kernels import get_backend
    ops = get_backend("triton", {"ffn_loads": "pointer"})   # options: BACKEND_OPTIONS["triton"]

What the op files share (INTERPRET, mma, the launch counters, count_flops) is triton_utils.py;
this module only builds the backend.  Without a GPU, set ``TRITON_INTERPRET=1`` before anything
imports triton: the kernels then run under Triton's interpreter on CPU tensors.
"""

import functools

from .triton_utils import INTERPRET, chosen_configs

_NO_DEVICE = ("backend 'triton' found no GPU driver: run on a CUDA GPU, or set TRITON_INTERPRET=1 "
              "before starting Python to run its kernels on CPU tensors under Triton's interpreter "
              "(slow; for tests)")


def _check_driver():
    """Triton reports a missing GPU at the first launch, as "0 active drivers ([]). There
    should only be one."; say what to do instead, before any launch."""
    if INTERPRET:
        return
    try:
        from triton.runtime import driver

        driver.active.get_current_device()
    except Exception:
        raise RuntimeError(_NO_DEVICE) from None


def make_backend(Backend, options):
    _check_driver()
    from .attention import attention
    from .ffn import feedforward, tma_state
    from .layernorm import add_layer_norm, layer_norm

    opts = dict(options)
    loads = opts["ffn_loads"]

    def describe():
        return {"ffn_loads": loads, "ffn_tma": tma_state(loads), "autotune": chosen_configs()}

    return Backend(name="triton", layer_norm=layer_norm, add_layer_norm=add_layer_norm,
                   attention=attention, feedforward=functools.partial(feedforward, loads=loads),
                   books=frozenset({"layernorm", "attention", "feedforward"}), options=options,
                   describer=describe)
