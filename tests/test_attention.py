"""Triton flash attention against the float64 reference; errors held to PyTorch's own.

    pytest tests/test_attention.py            # CPU: Triton interpreter (conftest sets it)
    pytest tests/test_attention.py -m gpu     # real sizes in bf16 on a GPU
"""

import pytest
import torch
import tolerance

from flopscale.engine import FlopLedger
from flopscale.kernels import get_backend
from flopscale.kernels.attention import (_attention_bwd_dkdv_kernel, _attention_bwd_dq_kernel,
                                         _attention_fwd_kernel, attention, attention_executed,
                                         attention_ref)
from flopscale.kernels.flop_counts import causal_attention_flops
from flopscale.kernels.triton_utils import count_flops, triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def check(name, tri, eager, ref, factor):
    tolerance.check(name, tri, eager, ref, factor, tag="triton")


def run_and_compare(B, H, T, D, causal, dtype, device=DEVICE):
    torch.manual_seed(T * D + causal)
    q0, k0, v0 = (torch.randn(B, H, T, D, device=device, dtype=dtype) for _ in range(3))
    do = torch.randn(B, H, T, D, device=device, dtype=dtype)
    outs = {}
    for tag, fn in (("tri", lambda q, k, v: attention(q, k, v, causal)),
                    ("torch", lambda q, k, v: attention_ref(q, k, v, causal)),
                    ("ref", lambda q, k, v: attention_ref(q, k, v, causal, upcast=True))):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        o = fn(q, k, v)
        o.backward(do)
        outs[tag] = (o, q.grad, k.grad, v.grad)
    for i, name in enumerate(("o", "dq", "dk", "dv")):
        check(name, outs["tri"][i], outs["torch"][i], outs["ref"][i], 2 if i == 0 else 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,D", [(1, 2, 45, 40), (2, 1, 33, 32)])
def test_attention_matches_reference(B, H, T, D, causal, dtype):
    run_and_compare(B, H, T, D, causal, dtype)


@pytest.mark.parametrize("T,D", [(17, 80), (64, 64), (20, 128)])
def test_attention_head_dims(T, D):
    run_and_compare(1, 1, T, D, True, torch.float32)


def test_attention_strided_views_of_fused_qkv():
    """q, k, v as the model makes them: permuted views of one (B, T, 3*H*D) projection, and a
    transposed upstream gradient.  The gradient reaches the fused tensor through the views."""
    B, T, H, D = 2, 21, 2, 16
    torch.manual_seed(5)
    qkv0 = torch.randn(B, T, 3 * H * D, device=DEVICE)
    do = torch.randn(B, T, H, D, device=DEVICE).transpose(1, 2)  # (B, H, T, D), not dense
    outs = {}
    for tag, fn in (("tri", attention), ("torch", attention_ref),
                    ("ref", lambda q, k, v, c: attention_ref(q, k, v, c, upcast=True))):
        qkv = qkv0.clone().requires_grad_()
        q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        o = fn(q, k, v, True)
        o.backward(do)
        outs[tag] = (o, qkv.grad)
    check("o", outs["tri"][0], outs["torch"][0], outs["ref"][0], 2)
    check("dqkv", outs["tri"][1], outs["torch"][1], outs["ref"][1], 3)


def _count_into_ledger(B, H, T, D, causal, device=DEVICE, dtype=torch.float32):
    """Run forward+backward in instrumented mode inside a ledger: (counter counts, ledger rows)."""
    q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    with FlopLedger() as led:
        counts = count_flops(lambda c: attention(q, k, v, causal, counter=c), device,
                             grad=torch.randn(B, H, T, D, device=device, dtype=dtype))
    return counts, led.rows("executed")


@pytest.mark.parametrize("causal", [True, False])
def test_attention_counted_flops_equal_executed(causal):
    B, H, T, D = 1, 2, 45, 40
    counts, ex = _count_into_ledger(B, H, T, D, causal)
    fwd, bwd = attention_executed(B, H, T, D, causal)["attention_mask"]
    print(f"counted {counts}, formula ({fwd}, {bwd}), ledger {ex['attention_mask']}")
    assert (counts["fwd"], counts["bwd"]) == (fwd, bwd)
    assert ex["attention_mask"] == counts  # booked at the launches, forward and backward
    assert (ex["softmax"]["fwd"], ex["softmax"]["bwd"]) == attention_executed(B, H, T, D, causal)["softmax"]
    # Whole tiles and recompute: more than the model view's causal count, never less.
    assert fwd >= causal_attention_flops(B, H, T, D)[0]


def _force(monkeypatch, kernel, BM, BN):
    """Make ``kernel`` autotune over one config of tile (BM, BN)."""
    monkeypatch.setattr(kernel, "configs", [triton.Config({"BLOCK_M": BM, "BLOCK_N": BN}, num_warps=4, num_stages=1)])
    monkeypatch.setattr(kernel, "cache", {})


# Two configs per kernel with different tiles; the second keeps each kernel's divisibility rule
# (forward and dQ: BLOCK_N divides BLOCK_M; dK/dV: BLOCK_M divides BLOCK_N).
FORCED = {"16x16": {"fwd": (16, 16), "dkdv": (16, 16), "dq": (16, 16)},
          "32x16": {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("forced", list(FORCED))
def test_attention_books_the_config_that_ran(forced, causal, monkeypatch):
    """The executed view is booked from the launch, after autotune picked: forcing each kernel's
    config list to one tile, the ledger's count equals the formula for that tile and the
    kernels' own counter; the two configs give different counts."""
    tiles = FORCED[forced]
    for kind, kernel in (("fwd", _attention_fwd_kernel), ("dkdv", _attention_bwd_dkdv_kernel),
                         ("dq", _attention_bwd_dq_kernel)):
        _force(monkeypatch, kernel, *tiles[kind])
    B, H, T, D = 1, 2, 45, 24
    counts, ex = _count_into_ledger(B, H, T, D, causal)
    want = attention_executed(B, H, T, D, causal, tiles=tiles)
    print(f"{forced} causal={causal}: ledger {ex['attention_mask']}, counter {counts}, formula {want}")
    assert ex["attention_mask"] == counts
    assert (counts["fwd"], counts["bwd"]) == want["attention_mask"]
    assert (ex["softmax"]["fwd"], ex["softmax"]["bwd"]) == want["softmax"]
    other = attention_executed(B, H, T, D, causal, tiles=FORCED["32x16" if forced == "16x16" else "16x16"])
    assert other["attention_mask"] != want["attention_mask"]


def test_attention_backward_books_into_the_forward_ledger():
    """A backward run after the ``with`` closed still lands in the ledger open at forward time,
    and in no ledger open only at backward time (as engine.flops.record does)."""
    B, H, T, D = 1, 1, 20, 16
    q, k, v = (torch.randn(B, H, T, D, device=DEVICE, requires_grad=True) for _ in range(3))
    with FlopLedger() as led:
        o = attention(q, k, v, True)
    fwd_only = led.rows("executed")["attention_mask"]
    assert fwd_only["fwd"] > 0 and fwd_only["bwd"] == 0
    with FlopLedger() as late:
        o.backward(torch.randn_like(o))
    assert led.rows("executed")["attention_mask"]["bwd"] == attention_executed(B, H, T, D, True)["attention_mask"][1]
    assert late.total("executed", rows="all") == 0


def test_attention_backend_and_bad_input():
    ops = get_backend("triton")
    assert ops.name == "triton" and ops.attention is not None
    assert {"attention", "layernorm", "feedforward"} <= ops.books  # booked at launch
    assert ops.executed("attention", B=1, H=1, T=45, D=40, causal=True) is None
    with pytest.raises(ValueError):
        attention(torch.randn(1, 1, 4, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 4, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,D", [(2, 16, 2048, 128), (1, 8, 4096, 64), (2, 4, 1000, 80)])
def test_attention_gpu_bf16(B, H, T, D, causal):
    run_and_compare(B, H, T, D, causal, torch.bfloat16, device="cuda")


@pytest.mark.gpu
def test_attention_gpu_counted_flops():
    B, H, T, D = 1, 4, 1000, 128
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    with FlopLedger() as led:
        counts = count_flops(lambda c: attention(q, k, v, True, counter=c), "cuda",
                             grad=torch.randn_like(q))
    # Autotune picks the tiles on a GPU: the ledger booked the ones that ran, as the counter saw.
    assert led.rows("executed")["attention_mask"] == counts
