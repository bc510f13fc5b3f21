"""The ``cuda`` backend (csrc/ via flopscale._C) against the float64 references.

    pytest tests/test_cuda_ops.py            # CPU: the missing-extension message, the FLOP model
    pytest -m gpu tests/test_cuda_ops.py     # GPU with the extension built (csrc/gpu_check.sh)

Each check: max error of the kernel <= 2x (forward) or 3x (gradients) the max error of
PyTorch's own eager op in the same dtype, both against the float64 reference, plus one ulp of
the reference's magnitude (of the inputs' magnitude where that is larger, for attention; 1e-5
relative for the fp32 feedforward, whose GELU epilogue is approximate: see the tests); both
errors are printed before asserting.  Outputs land in memory
poisoned with NaN bit patterns first, so an element a kernel forgets to write fails the test.
"""

import pytest
import torch
import tolerance

from flopscale.kernels import get_backend
from flopscale.kernels.attention import attention_ref
from flopscale.kernels.cuda_backend import attention_executed
from flopscale.kernels.ffn import feedforward_ref
from flopscale.kernels.layernorm import add_layer_norm_ref, layer_norm_ref

HALF = [torch.float16, torch.bfloat16]
ALL = [torch.float32, torch.float16, torch.bfloat16]


def _have_extension():
    try:
        from flopscale import _C  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def ops():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not _have_extension():
        pytest.skip("flopscale._C not built (FLOPSCALE_BUILD_CUDA=1 pip install -e .)")
    return get_backend("cuda")


def poison():
    """Fill freed caching-allocator blocks with 0xFF (NaN in fp32, fp16 and bf16) so the next
    torch.empty calls, the kernels' outputs among them, start from NaN rather than old results."""
    blocks = [torch.empty(1 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF) for _ in range(16)]
    blocks.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF))
    del blocks


def check(name, cuda, eager, ref, factor, atol_floor=0.0, atol_rel=None):
    tolerance.check(name, cuda, eager, ref, factor, tag="cuda", atol_floor=atol_floor, atol_rel=atol_rel)


def run_three(fns, inputs, grads):
    """Run each fn on fresh leaf clones of ``inputs``; return {tag: (outputs..., input grads...)}."""
    out = {}
    for tag, fn in fns.items():
        if tag == "cuda":
            poison()
        leaves = [t.clone().requires_grad_() for t in inputs]
        res = fn(*leaves)
        res = res if isinstance(res, tuple) else (res,)
        torch.autograd.backward(res, grads[: len(res)])
        out[tag] = tuple(r.detach() for r in res) + tuple(t.grad for t in leaves)
    return out


# ---------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ALL, ids=str)
# Widths reach every launch shape of csrc/layernorm: one warp per row (200, 1024), several warps
# per row on the vector path (4096) and the scalar path (431, 1031), several rows per CTA, CTAs
# that stride over many row groups in the backward (20000 rows), and the warp-per-row fallback
# for widths past the row-resident kernels (20000).
@pytest.mark.parametrize("shape", [(37, 200), (3, 5, 431), (4, 1024), (6, 4096), (5, 1031), (20000, 64),
                                   (2, 20000)], ids=str)
def test_layer_norm(ops, shape, dtype):
    torch.manual_seed(shape[-1])
    C = shape[-1]
    x = torch.randn(shape, device="cuda", dtype=dtype) * 3 + 1
    w = torch.randn(C, device="cuda", dtype=dtype)
    b = torch.randn(C, device="cuda", dtype=dtype)
    dy = torch.randn(shape, device="cuda", dtype=dtype)
    fns = {"cuda": lambda x, w, b: ops.layer_norm(x, w, b, 1e-5),
           "torch": lambda x, w, b: layer_norm_ref(x, w, b, 1e-5),
           "ref": lambda x, w, b: layer_norm_ref(x, w, b, 1e-5, upcast=True)}
    out = run_three(fns, [x, w, b], [dy])
    for i, name in enumerate(("y", "dx", "dw", "db")):
        check(name, out["cuda"][i], out["torch"][i], out["ref"][i], 2 if i == 0 else 3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ALL, ids=str)
@pytest.mark.parametrize("shape", [(37, 200), (2, 7, 431), (6, 4096), (5, 1031)], ids=str)
def test_add_layer_norm(ops, shape, dtype):
    torch.manual_seed(7 + shape[-1])
    C = shape[-1]
    x, r = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(2))
    w, b = (torch.randn(C, device="cuda", dtype=dtype) for _ in range(2))
    dy, ds = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(2))
    fns = {"cuda": lambda x, r, w, b: ops.add_layer_norm(x, r, w, b, 1e-5),
           "torch": lambda x, r, w, b: add_layer_norm_ref(x, r, w, b, 1e-5),
           "ref": lambda x, r, w, b: add_layer_norm_ref(x, r, w, b, 1e-5, upcast=True)}
    out = run_three(fns, [x, r, w, b], [dy, ds])
    for i, name in enumerate(("y", "s", "dx", "dresidual", "dw", "db")):
        check(name, out["cuda"][i], out["torch"][i], out["ref"][i], 2 if i < 2 else 3)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("B,H,T,D", [(2, 3, 45, 64), (1, 2, 77, 128), (2, 2, 130, 64), (1, 1, 1, 128),
                                     (1, 2, 256, 128), (1, 2, 333, 128), (1, 1, 520, 64)])
# The cuda backend's "attention" option (kernels/__init__.py BACKEND_OPTIONS, a run's
# cuda_attention field): "auto" is what the extension picks (the wgmma kernels on an H100 / H200
# with sm_90a code, else mma.sync); "mma_sync" the mma.sync kernels on any GPU.  The other wgmma
# variant sets live in the lab (csrc/dev), tested there.
@pytest.mark.parametrize("kernel", ["auto", "mma_sync"], ids=["default", "mma"])
def test_attention(ops, B, H, T, D, causal, dtype, kernel):
    ops = get_backend("cuda", {"attention": kernel})
    torch.manual_seed(T * D + causal)
    q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=dtype) for _ in range(4))
    fns = {"cuda": lambda q, k, v: ops.attention(q, k, v, causal),
           "torch": lambda q, k, v: attention_ref(q, k, v, causal),
           "ref": lambda q, k, v: attention_ref(q, k, v, causal, upcast=True)}
    out = run_three(fns, [q, k, v], [do])
    # atol floor 1: q, k, v, do are unit-variance, so every output and gradient is formed from
    # O(1) terms and rounds at that scale.  Without the floor the atol is eps * max|ref|, which
    # is 0 where the true value is exactly 0: at T = 1 causal the softmax runs over one key,
    # dq = 0 exactly, eager's dq is exactly 0 too (its algebra cancels symbolically), while the
    # flash backward's dS = P (dP - delta) with delta = rowsum(dO * O) cancels only to rounding
    # (H200, 2026-11-26: dq 1.788e-06 against an atol of 0).
    for i, name in enumerate(("o", "dq", "dk", "dv")):
        check(name, out["cuda"][i], out["torch"][i], out["ref"][i], 2 if i == 0 else 3, atol_floor=1.0)


@pytest.mark.gpu
def test_hopper_runs_the_wgmma_kernels(ops):
    """On an sm_90 card the default must be the wgmma kernels (their tiles: 128-query forward
    CTAs, 128-key backward CTAs), not a silent fall-back to mma.sync; attention="mma_sync"
    must give the mma.sync tiles back.  describe() records which ran."""
    from flopscale import _C

    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs an sm_90 GPU (H100 / H200)")
    assert list(_C.attention_tiles(128, 0)) == [128, 128, 64, 128]
    assert list(_C.attention_tiles(64, 0)) == [128, 128, 128, 128]
    assert list(_C.attention_tiles(128, 1)) == [64, 64, 32, 64]
    assert ops.describe()["attention"] == "wgmma" == _C.attention_kernel_name(0)
    assert get_backend("cuda", {"attention": "mma_sync"}).describe()["attention"] == "mma_sync"


def test_attention_rejects_bad_kernel_choice():
    """A kernel choice is a checked option (one line, before the extension loads), not an
    environment variable the extension reads."""
    with pytest.raises(ValueError, match="option attention='wg1' is not one of auto, mma_sync"):
        get_backend("cuda", {"attention": "wg1"})


@pytest.mark.gpu
def test_attention_rejects_bad_head_dim(ops):
    q = torch.randn(1, 1, 8, 80, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="head dim"):
        ops.attention(q, q, q, True)


# ---------------------------------------------------------------------------------------------
# Feedforward
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ALL, ids=str)
# d_model 100 (not a multiple of 8): the scalar path of the backward's column sums (db_out)
@pytest.mark.parametrize("shape,d_ff", [((37, 200), 800), ((3, 15, 64), 256), ((2, 9, 100), 400)], ids=str)
# The "ffn_backward" option (a run's cuda_ffn_backward field): dGELU as its own pass, or fused
# into cuBLASLt's epilogue.
@pytest.mark.parametrize("backward", ["split", "lt_epilogues"])
def test_feedforward(ops, shape, d_ff, dtype, backward):
    ops = get_backend("cuda", {"ffn_backward": backward})
    torch.manual_seed(d_ff)
    d = shape[-1]
    x = torch.randn(shape, device="cuda", dtype=dtype)
    w_in = torch.randn(d_ff, d, device="cuda", dtype=dtype) / d ** 0.5
    b_in = torch.randn(d_ff, device="cuda", dtype=dtype)
    w_out = torch.randn(d, d_ff, device="cuda", dtype=dtype) / d_ff ** 0.5
    b_out = torch.randn(d, device="cuda", dtype=dtype)
    dy = torch.randn(shape, device="cuda", dtype=dtype)
    fns = {"cuda": ops.feedforward, "torch": feedforward_ref,
           "ref": lambda *a: feedforward_ref(*a, upcast=True)}
    out = run_three(fns, [x, w_in, b_in, w_out, b_out], [dy])
    # fp32: cuBLASLt's fused GELU / DGELU epilogues evaluate tanh approximately, so in fp32 the
    # kernel's error sits above 2x eager's (exact tanhf) by a constant, not a multiple: measured
    # on an H200 (2026-11-26), y 7.153e-06 vs eager 1.192e-06 and 7.033e-06 vs 9.537e-07 with
    # |y| up to ~6, i.e. ~1.2e-6 relative.  An atol of 1e-5 relative to max|ref| (8x that, still
    # 100x under a bf16 ulp) covers it.  bf16 / fp16 keep one ulp, their rounding dominates.
    rel = 1e-5 if dtype == torch.float32 else None
    for i, name in enumerate(("y", "dx", "dw_in", "db_in", "dw_out", "db_out")):
        check(name, out["cuda"][i], out["torch"][i], out["ref"][i], 2 if i == 0 else 3, atol_rel=rel)


# ---------------------------------------------------------------------------------------------
# FLOP accounting and the missing-extension path
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["auto", "mma_sync"])
def test_executed_rows_follow_the_kernel_choice(kernel):
    """The attention launches book the whole tiles of the kernel that ran (wgmma and mma.sync
    tiles differ); LayerNorm and the cuBLASLt feedforward book nothing of their own."""
    from flopscale import _C
    from flopscale.engine import FlopLedger
    from flopscale.kernels.cuda_backend import ATTENTION_KERNELS
    from flopscale.kernels.flop_counts import causal_attention_flops

    if not _have_extension():
        pytest.skip("flopscale._C not built")
    ops = get_backend("cuda", {"attention": kernel})
    assert ops.books == frozenset({"attention"})
    B, H, T, D = 2, 3, 77, 128
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with FlopLedger() as led:
        ops.attention(q, k, v, True).backward(torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16))
    tiles = tuple(_C.attention_tiles(D, ATTENTION_KERNELS[kernel]))
    want = attention_executed(B, H, T, D, True, tiles=tiles)
    ex = led.rows("executed")
    print(kernel, ops.describe()["attention"], tiles, ex["attention_mask"], want)
    assert (ex["attention_mask"]["fwd"], ex["attention_mask"]["bwd"]) == want["attention_mask"]
    assert (ex["softmax"]["fwd"], ex["softmax"]["bwd"]) == want["softmax"]
    model_fwd, model_bwd = causal_attention_flops(B, H, T, D)
    assert want["attention_mask"][0] >= model_fwd and want["attention_mask"][1] >= model_bwd


def test_attention_executed_counts_whole_tiles():
    B, H, D = 2, 3, 64
    # Full attention over whole tiles: exactly the eager count; backward 5 matmuls vs 2.
    fwd, bwd = attention_executed(B, H, 128, D, causal=False)["attention_mask"]
    assert fwd == 4 * B * H * 128 * 128 * D and bwd == fwd * 5 // 2
    # Causal, T = 128 with 64-tiles: query tile 0 sees 1 key tile, tile 1 sees 2 -> 3 pairs.
    fwd, bwd = attention_executed(B, H, 128, D, causal=True)["attention_mask"]
    assert fwd == B * H * 3 * 2 * (2 * 64 * 64 * D)
    assert bwd == B * H * 3 * 5 * (2 * 64 * 64 * D)
    # Ragged T = 45 pads to one whole 64 x 64 tile; a 32-row backward tile changes the count.
    fwd, bwd = attention_executed(1, 1, 45, 128, causal=True, tiles=(64, 64, 32, 64))["attention_mask"]
    assert fwd == 2 * (2 * 64 * 64 * 128) and bwd == 2 * 5 * (2 * 32 * 64 * 128)


def test_cuda_backend_without_extension_says_so():
    if _have_extension():
        pytest.skip("the extension is built here")
    with pytest.raises(RuntimeError, match="installed without its CUDA extension.*FLOPSCALE_BUILD_CUDA=1"):
        get_backend("cuda")
