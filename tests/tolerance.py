"""The one tolerance rule of the kernel tests (docs/ARCHITECTURE.md, "An op").

A kernel's max error against the float64 reference must be at most ``factor`` x PyTorch's own
error in the same dtype (2 for outputs, 3 for gradients) plus a small atol:
atol = atol_rel * max(max|ref|, atol_floor), atol_rel defaulting to one ulp (eps) of the dtype.
``atol_floor`` is the scale of the inputs that produced a value, for outputs whose true value is
(near) zero, where eps * max|ref| would demand exact zeros.  Both errors are printed first;
NaN never passes.
"""

import torch


def max_err(a, ref) -> float:
    return (a.double() - ref.double()).abs().max().item()


def check(name, ours, eager, ref, factor, tag="kernel", atol_floor=0.0, atol_rel=None):
    e_ours, e_torch = max_err(ours, ref), max_err(eager, ref)
    rel = torch.finfo(ours.dtype).eps if atol_rel is None else atol_rel
    atol = rel * max(ref.double().abs().max().item(), atol_floor)
    print(f"{name}: {tag} {e_ours:.3e}  torch {e_torch:.3e}  atol {atol:.1e}")
    assert e_ours == e_ours, f"{name} is NaN (an unwritten or non-finite element)"
    assert e_ours <= factor * e_torch + atol, f"{name}: {e_ours:.3e} > {factor} x {e_torch:.3e} + {atol:.1e}"
