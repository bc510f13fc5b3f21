"""Triton feedforward (fused bias+GELU epilogues) against the float64 reference.

    pytest tests/test_ffn.py            # CPU: Triton interpreter (conftest sets it)
    pytest tests/test_ffn.py -m gpu     # real sizes in bf16 on a GPU
"""

import pytest
import torch
import tolerance

from flopscale.engine.flops import feedforward_op_model
from flopscale.kernels.ffn import feedforward, feedforward_executed, feedforward_ref
from flopscale.kernels.triton_backend import count_flops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(name, tri, eager, ref, factor):
    tolerance.check(name, tri, eager, ref, factor, tag="triton")


def params(lead, d_model, d_ff, dtype, device, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(*lead, d_model, device=device)
    w_in = torch.randn(d_ff, d_model, device=device) / d_model ** 0.5
    b_in = 0.1 * torch.randn(d_ff, device=device)
    w_out = torch.randn(d_model, d_ff, device=device) / d_ff ** 0.5
    b_out = 0.1 * torch.randn(d_model, device=device)
    return [t.to(dtype) for t in (x, w_in, b_in, w_out, b_out)]


def run_and_compare(lead, d_model, d_ff, dtype, device=DEVICE):
    tensors = params(lead, d_model, d_ff, dtype, device)
    dy = torch.randn(*lead, d_model, device=device, dtype=dtype)
    outs = {}
    for tag, fn in (("tri", feedforward), ("torch", feedforward_ref),
                    ("ref", lambda *t: feedforward_ref(*t, upcast=True))):
        leaves = [t.clone().requires_grad_() for t in tensors]
        y = fn(*leaves)
        y.backward(dy)
        outs[tag] = [y] + [t.grad for t in leaves]
    for i, name in enumerate(("y", "dx", "dw_in", "db_in", "dw_out", "db_out")):
        check(name, outs["tri"][i], outs["torch"][i], outs["ref"][i], 2 if i == 0 else 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,d_model,d_ff", [((37,), 40, 72), ((2, 21), 48, 200)])
def test_feedforward_matches_reference(lead, d_model, d_ff, dtype):
    run_and_compare(lead, d_model, d_ff, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)  # pointer / TMA loads
def test_feedforward_counted_flops_equal_executed(dtype):
    rows, d_model, d_ff = 37, 40, 72
    x, w_in, b_in, w_out, b_out = params((rows,), d_model, d_ff, dtype, DEVICE)
    x.requires_grad_()
    counts = count_flops(lambda c: feedforward(x, w_in, b_in, w_out, b_out, counter=c), DEVICE,
                         grad=torch.randn(rows, d_model, device=DEVICE, dtype=dtype), inputs=[x])
    fwd, bwd = feedforward_executed(rows, d_model, d_ff)["feedforward"]
    print(f"counted {counts}, executed ({fwd}, {bwd}), model {feedforward_op_model(rows, d_model, d_ff)['feedforward']}")
    assert (counts["fwd"], counts["bwd"]) == (fwd, bwd)
    assert fwd >= feedforward_op_model(rows, d_model, d_ff)["feedforward"][0]


def test_feedforward_tma_operand_choice():
    """16-bit operands with a unit stride take the tensor-descriptor loop, tiles loaded as they
    lie (K-major or not); fp32 and misaligned views take pointer loads."""
    from flopscale.kernels.ffn import _tma_operands

    x, w_in, _, w_out, _ = params((37,), 40, 72, torch.bfloat16, DEVICE)
    h = torch.randn(37, 72, device=DEVICE, dtype=torch.bfloat16)
    assert _tma_operands(x, w_in.t())[2:] == (True, True)    # x W_in^T: W_in is (N, K) row-major
    assert _tma_operands(x, w_out)[2:] == (True, False)      # dY W_out: W_out is (K, N) row-major
    assert _tma_operands(x.t(), h)[2:] == (False, False)     # dY^T h: dY is (K, M) row-major
    assert _tma_operands(x[:, 1:], w_in[:, 1:].t()) is None  # base not 16-byte aligned
    assert _tma_operands(x.float(), w_in.float().t()) is None


def test_feedforward_bad_input():
    x, w_in, b_in, w_out, b_out = params((3,), 8, 16, torch.float32, DEVICE)
    with pytest.raises(ValueError):
        feedforward(x, w_in.t(), b_in, w_out, b_out)


@pytest.mark.gpu
@pytest.mark.parametrize("lead,d_model,d_ff", [((8, 1024), 1024, 4096), ((4, 1000), 768, 3072)])
def test_feedforward_gpu_bf16(lead, d_model, d_ff):
    run_and_compare(lead, d_model, d_ff, torch.bfloat16, device="cuda")


@pytest.mark.gpu
def test_feedforward_gpu_counted_flops():
    rows, d_model, d_ff = 1000, 768, 3072
    x, w_in, b_in, w_out, b_out = params((rows,), d_model, d_ff, torch.bfloat16, "cuda")
    x.requires_grad_()
    counts = count_flops(lambda c: feedforward(x, w_in, b_in, w_out, b_out, counter=c), "cuda",
                         grad=torch.randn_like(x), inputs=[x])
    assert (counts["fwd"], counts["bwd"]) == feedforward_executed(rows, d_model, d_ff)["feedforward"]
