"""Triton feedforward (fused bias+GELU epilogues) against the float64 reference.

    pytest tests/test_ffn.py            # CPU: Triton interpreter (conftest sets it)
    pytest tests/test_ffn.py -m gpu     # real sizes in bf16 on a GPU
"""

import pytest
import torch
import tolerance

from flopscale.engine import FlopLedger
from flopscale.kernels import get_backend
from flopscale.kernels.ffn import (_ffn_matmul_kernel, _ffn_matmul_tma_kernel, _set_tma_blocks, feedforward,
                                   feedforward_executed, feedforward_ref)
from flopscale.kernels.flop_counts import feedforward_op_model
from flopscale.kernels.triton_utils import count_flops, triton

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


def _count_into_ledger(rows, d_model, d_ff, dtype, **kw):
    x, w_in, b_in, w_out, b_out = params((rows,), d_model, d_ff, dtype, DEVICE)
    x.requires_grad_()
    with FlopLedger() as led:
        counts = count_flops(lambda c: feedforward(x, w_in, b_in, w_out, b_out, counter=c, **kw), DEVICE,
                             grad=torch.randn(rows, d_model, device=DEVICE, dtype=dtype), inputs=[x])
    return counts, led.rows("executed")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)  # pointer / TMA loads
def test_feedforward_counted_flops_equal_executed(dtype):
    rows, d_model, d_ff = 37, 40, 72
    counts, ex = _count_into_ledger(rows, d_model, d_ff, dtype)
    want = feedforward_executed(rows, d_model, d_ff)
    print(f"counted {counts}, formula {want['feedforward']}, ledger {ex['feedforward']}, "
          f"model {feedforward_op_model(rows, d_model, d_ff)['feedforward']}")
    assert (counts["fwd"], counts["bwd"]) == want["feedforward"]
    assert ex["feedforward"] == counts  # booked at the launches
    assert all((ex[r]["fwd"], ex[r]["bwd"]) == want[r] for r in ("gelu", "bias"))
    assert want["feedforward"][0] >= feedforward_op_model(rows, d_model, d_ff)["feedforward"][0]


FORCED = {"16x16": (16, 16, 16), "32x16": (32, 16, 16)}  # (BLOCK_M, BLOCK_N, BLOCK_K)


@pytest.mark.parametrize("loads", ["auto", "pointer"])
@pytest.mark.parametrize("forced", list(FORCED))
def test_feedforward_books_the_config_that_ran(forced, loads, monkeypatch):
    """Both matmul kernels (TMA loads for bf16 under "auto", pointer loads otherwise) forced to
    one config: the ledger books that config's whole tiles, equal to the kernels' counter."""
    BM, BN, BK = FORCED[forced]
    kw = {"BLOCK_M": BM, "BLOCK_N": BN, "BLOCK_K": BK, "GROUP_M": 4}
    monkeypatch.setattr(_ffn_matmul_kernel, "configs", [triton.Config(kw, num_warps=4, num_stages=1)])
    monkeypatch.setattr(_ffn_matmul_tma_kernel, "configs",
                        [triton.Config(kw, num_warps=4, num_stages=1, pre_hook=_set_tma_blocks)])
    rows, d_model, d_ff = 37, 40, 72
    counts, ex = _count_into_ledger(rows, d_model, d_ff, torch.bfloat16, loads=loads)
    roles = ("in", "out", "dh", "dw_out", "dx", "dw_in")
    want = feedforward_executed(rows, d_model, d_ff, tiles={r: (BM, BN, BK) for r in roles})
    print(f"{forced} loads={loads}: ledger {ex['feedforward']}, counter {counts}, formula {want['feedforward']}")
    assert ex["feedforward"] == counts
    assert (counts["fwd"], counts["bwd"]) == want["feedforward"]
    assert all((ex[r]["fwd"], ex[r]["bwd"]) == want[r] for r in ("gelu", "bias"))


def test_feedforward_pointer_loads_option():
    """ffn_loads="pointer" (a backend option, no environment variable) never takes TMA loads."""
    from flopscale.kernels.ffn import _tma_operands

    x, w_in, *_ = params((37,), 40, 72, torch.bfloat16, DEVICE)
    assert _tma_operands(x, w_in.t(), "pointer") is None and _tma_operands(x, w_in.t()) is not None
    ops = get_backend("triton", {"ffn_loads": "pointer"})
    assert ops.describe()["ffn_loads"] == "pointer"
    with pytest.raises(ValueError, match="loads"):
        feedforward(*params((3,), 8, 16, torch.float32, DEVICE), loads="tma")


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
    with FlopLedger() as led:
        counts = count_flops(lambda c: feedforward(x, w_in, b_in, w_out, b_out, counter=c), "cuda",
                             grad=torch.randn_like(x), inputs=[x])
    # Autotune picks the tiles on a GPU: the ledger booked the ones that ran, as the counter saw.
    assert led.rows("executed")["feedforward"] == counts
