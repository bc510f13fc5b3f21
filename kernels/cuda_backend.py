"""The ``cuda`` backend: csrc/ kernels (flopscale._C) behind torch.autograd.Functions.

    ops = get_backend("cuda")      # RuntimeError with one clear line if _C was not built
    ops = get_backend("cuda", {"attention": "mma_sync", "ffn_backward": "lt_epilogues"})
    y = ops.layer_norm(x, w, b, eps=1e-5)
    o = ops.attention(q, k, v, causal=True)         # (B, H, T, D), D in {64, 128}, fp16/bf16
    ops.describe()["attention"]                     # "wgmma" or "mma_sync": what runs here

This is the only module that imports ``flopscale._C``.  Each Function only calls the extension's
fwd/bwd and saves tensors; shapes, dtypes and devices are checked in csrc/bindings.cpp.  Kernel
choices are the backend's options (kernels/__init__.py BACKEND_OPTIONS), passed to every call;
the extension reads no environment variables.  Bindings used:

    _C.attention_fwd(q, k, v, causal, kernel) -> (o, lse)
    _C.attention_bwd(do, q, k, v, o, lse, causal, kernel) -> (dq, dk, dv)
    _C.attention_kernel_name(kernel) -> "wgmma" | "mma_sync"      (what kernel resolves to here)
    _C.attention_tiles(D, kernel) -> (fwd BLOCK_M, fwd BLOCK_N, bwd BLOCK_M, bwd BLOCK_N)
    _C.ffn_bwd(dy, x, w_in, w_out, h_pre, h, lt_epilogues) -> (dx, dw_in, db_in, dw_out, db_out)

with kernel 0 = auto (wgmma on Hopper with sm_90a code, else mma.sync), 1 = mma.sync everywhere.
"""

import functools

import torch

from . import accounting
from .flop_counts import causal_tile_pairs, softmax_flops

ATTENTION_KERNELS = {"auto": 0, "mma_sync": 1}  # the attention option -> the bindings' kernel int

_EXT_MISSING = (
    "flopscale was installed without its CUDA extension; reinstall on a machine with nvcc and a "
    "CUDA build of torch, FLOPSCALE_BUILD_CUDA=1 pip install --no-build-isolation -e ."
)


def _load_extension():
    try:
        from flopscale import _C
    except ImportError as e:  # not built, or built against another torch / CUDA
        raise RuntimeError(f"{_EXT_MISSING} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not torch.cuda.is_available():
        raise RuntimeError("backend 'cuda' needs a CUDA GPU, and torch sees none here "
                           "(torch.cuda.is_available() is False); use --backend torch on CPU")
    return _C


# ---------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------
class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (rows, C)
        y, mean, rstd = _C.layernorm_fwd(x2, weight, bias, eps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _C.layernorm_bwd(dy.reshape(x2.shape), x2, weight, mean, rstd)
        return dx.view(ctx.shape), dw, db, None


class AddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps):
        shape = x.shape
        C = shape[-1]
        y, s, mean, rstd = _C.add_layernorm_fwd(x.reshape(-1, C), residual.reshape(-1, C), weight, bias, eps)
        ctx.save_for_backward(s, weight, mean, rstd)  # s = x + residual, as rounded to x's dtype
        ctx.shape = shape
        return y.view(shape), s.view(shape)

    @staticmethod
    def backward(ctx, dy, ds):
        s, weight, mean, rstd = ctx.saved_tensors
        # autograd materialises a zero ds when s went unused, so the fused kernel always adds it
        dx, dw, db = _C.add_layernorm_bwd(dy.reshape(s.shape), ds.reshape(s.shape), s, weight, mean, rstd)
        dx = dx.view(ctx.shape)
        return dx, dx, dw, db, None  # d(x + residual)/dx = d/dresidual = identity


def _match(p, x):
    # the kernels take weights in the activations' dtype; autograd casts the gradient back
    return p if p.dtype == x.dtype else p.to(x.dtype)


def layer_norm(x, weight, bias, eps=1e-5):
    return LayerNormFunction.apply(x, _match(weight, x), _match(bias, x), float(eps))


def add_layer_norm(x, residual, weight, bias, eps=1e-5):
    return AddLayerNormFunction.apply(x, residual, _match(weight, x), _match(bias, x), float(eps))


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------
class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, kernel):
        # Save dense copies: the model passes strided views of its fused QKV projection, and
        # the backward would otherwise densify them a second time.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, lse = _C.attention_fwd(q, k, v, causal, kernel)  # o (B, H, T, D); lse (B, H, T) fp32
        ctx.sinks = accounting.active_sinks()  # the backward books into the forward's ledgers
        if ctx.sinks:
            B, H, T, D = q.shape
            accounting.book(ctx.sinks, _executed_rows(B, H, T, D, causal, _tiles(D, kernel), False))
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.kernel = causal, kernel
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _C.attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.kernel)
        if ctx.sinks:
            B, H, T, D = q.shape
            accounting.book(ctx.sinks, _executed_rows(B, H, T, D, ctx.causal, _tiles(D, ctx.kernel), True), True)
        return dq, dk, dv, None, None


def attention(q, k, v, causal=True, kernel="auto"):
    """``kernel``: the attention option, "auto" or "mma_sync" (ATTENTION_KERNELS)."""
    return AttentionFunction.apply(q, k, v, bool(causal), ATTENTION_KERNELS[kernel])


@functools.lru_cache(maxsize=None)
def _tiles(D, kernel):
    """The tiles the extension's kernels use for head dim D and kernel choice ``kernel`` on this
    device, as it reports them (fixed per build and device, so cached)."""
    return tuple(int(t) for t in _C.attention_tiles(D, kernel))


def attention_executed(B, H, T, D, causal=True, tiles=(64, 64, 64, 64)):
    """FLOPs the csrc/attention kernels really compute, tile by tile.

    Convention: FLOPs, a multiply-add is 2.  Every (query tile, key tile) pair a kernel visits is
    computed whole: ragged tails are zero-padded, the causal diagonal's masked half included
    (``causal_tile_pairs``).  tiles = (fwd BLOCK_M, fwd BLOCK_N, bwd BLOCK_M, bwd BLOCK_N), from
    _C.attention_tiles(D, kernel): they differ between the wgmma and mma.sync kernels.
      forward:  per pair, S = Q K^T and O += P V: 2 matmuls of 2 * BM * BN * D.
      backward: per pair, the S recompute, dV = P^T dO, dP = dO V^T, dK = dS^T Q and
                dQ = dS K: 5 matmuls of 2 * BM * BN * D.
    Softmax elements: the BM * BN scores of each pair (forward and backward separately).
    """
    fwd = dict(_executed_rows(B, H, T, D, causal, tuple(tiles), False))
    bwd = dict(_executed_rows(B, H, T, D, causal, tuple(tiles), True))
    return {row: (fwd[row], bwd[row]) for row in fwd}


@functools.lru_cache(maxsize=None)
def _executed_rows(B, H, T, D, causal, tiles, backward):
    """((row, FLOPs), ...) of one forward (or backward) call: what it books."""
    fbm, fbn, bbm, bbn = tiles
    bm, bn, matmuls = (bbm, bbn, 5) if backward else (fbm, fbn, 2)
    pairs = B * H * causal_tile_pairs(T, bm, bn, causal)
    sm_fwd, sm_bwd = softmax_flops(B * H * T, pairs * bm * bn)
    return (("attention_mask", pairs * matmuls * (2 * bm * bn * D)), ("softmax", sm_bwd if backward else sm_fwd))


# ---------------------------------------------------------------------------------------------
# Feedforward (cuBLASLt with fused bias / GELU epilogues)
# ---------------------------------------------------------------------------------------------
class FeedForwardFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, b_out, lt_epilogues):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (rows, d_model)
        y, h_pre, h = _C.ffn_fwd(x2, w_in, b_in, w_out, b_out)
        ctx.save_for_backward(x2, w_in, w_out, h_pre, h)
        ctx.shape, ctx.lt_epilogues = shape, lt_epilogues
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, w_in, w_out, h_pre, h = ctx.saved_tensors
        dx, dw_in, db_in, dw_out, db_out = _C.ffn_bwd(dy.reshape(-1, dy.shape[-1]), x2, w_in, w_out, h_pre, h,
                                                      ctx.lt_epilogues)
        return dx.view(ctx.shape), dw_in, db_in, dw_out, db_out, None


FFN_BACKWARDS = ("split", "lt_epilogues")  # the ffn_backward option


def feedforward(x, w_in, b_in, w_out, b_out, backward="split"):
    """``backward``: the ffn_backward option, "split" or "lt_epilogues" (FFN_BACKWARDS).  Both
    compute exactly the model view's FLOPs (cuBLASLt GEMMs, no padding)."""
    return FeedForwardFunction.apply(x, *(_match(p, x) for p in (w_in, b_in, w_out, b_out)),
                                     backward == "lt_epilogues")


# ---------------------------------------------------------------------------------------------
_C = None


def make_backend(Backend, options):
    global _C
    _C = _load_extension()
    opts = dict(options)
    kernel = ATTENTION_KERNELS[opts["attention"]]

    def describe():
        return {"attention": _C.attention_kernel_name(kernel), "ffn_backward": opts["ffn_backward"]}

    return Backend(
        name="cuda",
        layer_norm=layer_norm,
        add_layer_norm=add_layer_norm,
        attention=functools.partial(attention, kernel=opts["attention"]),
        feedforward=functools.partial(feedforward, backward=opts["ffn_backward"]),
        # LayerNorm and cuBLASLt's GEMMs compute exactly the model view; attention books its
        # whole tiles at launch, with the tiles of the kernel the option resolved to.
        books=frozenset({"attention"}),
        options=options,
        describer=describe,
    )


__all__ = ["make_backend", "attention_executed", "layer_norm", "add_layer_norm", "attention", "feedforward"]
