"""Triton LayerNorm and residual-add LayerNorm against the float64 reference.

    pytest tests/test_layernorm.py            # CPU: Triton interpreter (conftest sets it)
    pytest tests/test_layernorm.py -m gpu     # real sizes in bf16 on a GPU
"""

import pytest
import torch
import tolerance

from flopscale.engine import FlopLedger
from flopscale.kernels.layernorm import (add_layer_norm, add_layer_norm_ref, layer_norm,
                                         layer_norm_executed, layer_norm_ref)
from flopscale.kernels.triton_utils import count_flops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(name, tri, eager, ref, factor):
    tolerance.check(name, tri, eager, ref, factor, tag="triton")


def inputs(shape, dtype, device, seed):
    torch.manual_seed(seed)
    C = shape[-1]
    x = torch.randn(shape, device=device, dtype=dtype) * 2 + 0.5  # a non-zero mean to remove
    r = torch.randn(shape, device=device, dtype=dtype)
    w = (1 + 0.2 * torch.randn(C, device=device)).to(dtype)
    b = (0.2 * torch.randn(C, device=device)).to(dtype)
    return x, r, w, b


def compare(fns, tensors, grads, n_out):
    outs = {}
    for tag, fn in fns.items():
        leaves = [t.clone().requires_grad_() for t in tensors]
        out = fn(*leaves)
        out = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(out, grads)
        outs[tag] = list(out) + [t.grad for t in leaves]
    for i in range(len(outs["tri"])):
        name = f"out{i}" if i < n_out else f"grad{i - n_out}"
        check(name, outs["tri"][i], outs["torch"][i], outs["ref"][i], 2 if i < n_out else 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 200), (2, 3, 431)])
def test_layer_norm_matches_reference(shape, dtype, device=DEVICE):
    x, _, w, b = inputs(shape, dtype, device, shape[-1])
    dy = torch.randn_like(x)
    compare({"tri": lambda x, w, b: layer_norm(x, w, b, 1e-5),
             "torch": lambda x, w, b: layer_norm_ref(x, w, b, 1e-5),
             "ref": lambda x, w, b: layer_norm_ref(x, w, b, 1e-5, upcast=True)},
            (x, w, b), (dy,), 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(37, 200)])
def test_add_layer_norm_matches_reference(shape, dtype, device=DEVICE):
    x, r, w, b = inputs(shape, dtype, device, 7)
    dy, ds = torch.randn_like(x), torch.randn_like(x)
    compare({"tri": lambda x, r, w, b: add_layer_norm(x, r, w, b, 1e-5),
             "torch": lambda x, r, w, b: add_layer_norm_ref(x, r, w, b, 1e-5),
             "ref": lambda x, r, w, b: add_layer_norm_ref(x, r, w, b, 1e-5, upcast=True)},
            (x, r, w, b), (dy, ds), 2)


def test_add_layer_norm_only_normalised_output_used():
    x, r, w, b = inputs((37, 200), torch.float32, DEVICE, 3)
    xs = [t.clone().requires_grad_() for t in (x, r)]
    add_layer_norm(xs[0], xs[1], w, b)[0].sum().backward()
    x2 = [t.clone().requires_grad_() for t in (x, r)]
    add_layer_norm_ref(x2[0], x2[1], w, b)[0].sum().backward()
    assert torch.allclose(xs[0].grad, x2[0].grad, atol=1e-5) and torch.equal(xs[0].grad, xs[1].grad)


@pytest.mark.parametrize("fused_add", [False, True], ids=["ln", "add_ln"])
def test_layer_norm_counted_flops_equal_executed(fused_add):
    x, r, w, b = inputs((37, 200), torch.float32, DEVICE, 1)
    x.requires_grad_()
    if fused_add:
        def run(c):
            return add_layer_norm(x, r, w, b, counter=c)
    else:
        def run(c):
            return layer_norm(x, w, b, counter=c)
    with FlopLedger() as led:
        counts = count_flops(run, DEVICE, grad=torch.randn_like(x), inputs=[x])
    want = layer_norm_executed(37, 200, residual=fused_add, device=DEVICE)
    ex = led.rows("executed")
    print(f"counted {counts}, formula {want}, ledger {ex['layernorm']}")
    assert (counts["fwd"], counts["bwd"]) == want["layernorm"]
    assert ex["layernorm"] == counts  # booked at the launches
    # the fused residual add: the model view's count, forward and backward
    assert (ex["residual"]["fwd"], ex["residual"]["bwd"]) == ((37 * 200, 37 * 200) if fused_add else (0, 0))


def test_layer_norm_bad_input():
    with pytest.raises(ValueError):
        layer_norm(torch.randn(3, 8), torch.ones(7), torch.zeros(8))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(16384, 1024), (8192, 4096), (4097, 1000)])
def test_layer_norm_gpu_bf16(shape):
    test_layer_norm_matches_reference(shape, torch.bfloat16, device="cuda")
    test_add_layer_norm_matches_reference(shape, torch.bfloat16, device="cuda")
