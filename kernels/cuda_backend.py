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
from .library import compiling, flop_formula

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
# Custom ops (kernels/library.py): each binding one node to torch.compile, CUDA graphs and
# FlopCounterMode; the Functions below are the eager path and call them.
# ---------------------------------------------------------------------------------------------
Tensor = torch.Tensor


@torch.library.custom_op("flopscale::cuda_layer_norm_fwd", mutates_args=())
def _ln_fwd_op(x2: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_C.layernorm_fwd(x2, weight, bias, eps))


@_ln_fwd_op.register_fake
def _(x2, weight, bias, eps):
    M = x2.shape[0]
    return x2.new_empty(x2.shape), x2.new_empty(M, dtype=torch.float32), x2.new_empty(M, dtype=torch.float32)


@torch.library.custom_op("flopscale::cuda_layer_norm_bwd", mutates_args=())
def _ln_bwd_op(dy2: Tensor, x2: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_C.layernorm_bwd(dy2.contiguous(), x2, weight, mean, rstd))


@_ln_bwd_op.register_fake
def _(dy2, x2, weight, mean, rstd):
    return x2.new_empty(x2.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


@torch.library.custom_op("flopscale::cuda_add_layer_norm_fwd", mutates_args=())
def _add_ln_fwd_op(x2: Tensor, r2: Tensor, weight: Tensor, bias: Tensor,
                   eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(_C.add_layernorm_fwd(x2, r2, weight, bias, eps))


@_add_ln_fwd_op.register_fake
def _(x2, r2, weight, bias, eps):
    M = x2.shape[0]
    return (x2.new_empty(x2.shape), x2.new_empty(x2.shape), x2.new_empty(M, dtype=torch.float32),
            x2.new_empty(M, dtype=torch.float32))


@torch.library.custom_op("flopscale::cuda_add_layer_norm_bwd", mutates_args=())
def _add_ln_bwd_op(dy2: Tensor, ds2: Tensor, s: Tensor, weight: Tensor, mean: Tensor,
                   rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(_C.add_layernorm_bwd(dy2.contiguous(), ds2.contiguous(), s, weight, mean, rstd))


@_add_ln_bwd_op.register_fake
def _(dy2, ds2, s, weight, mean, rstd):
    return s.new_empty(s.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _ln_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], output[1], output[2])


def _ln_op_backward(ctx, dy, dmean, drstd):
    x2, weight, mean, rstd = ctx.saved_tensors
    return (*torch.ops.flopscale.cuda_layer_norm_bwd(dy, x2, weight, mean, rstd), None)


def _add_ln_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[2], output[2], output[3])


def _add_ln_op_backward(ctx, dy, ds, dmean, drstd):
    s, weight, mean, rstd = ctx.saved_tensors
    dy = dy if dy is not None else torch.zeros_like(s)
    ds = ds if ds is not None else torch.zeros_like(s)
    dx, dw, db = torch.ops.flopscale.cuda_add_layer_norm_bwd(dy, ds, s, weight, mean, rstd)
    return dx, dx, dw, db, None


_ln_fwd_op.register_autograd(_ln_op_backward, setup_context=_ln_setup)
_add_ln_fwd_op.register_autograd(_add_ln_op_backward, setup_context=_add_ln_setup)


@torch.library.custom_op("flopscale::cuda_attention_fwd", mutates_args=())
def _attn_fwd_op(q: Tensor, k: Tensor, v: Tensor, causal: bool, kernel: int) -> tuple[Tensor, Tensor]:
    o, lse = _C.attention_fwd(q, k, v, causal, kernel)
    sinks = accounting.active_sinks()
    if sinks:
        B, H, T, D = q.shape
        accounting.book(sinks, _executed_rows(B, H, T, D, causal, _tiles(D, kernel), False))
    return o, lse


@_attn_fwd_op.register_fake
def _(q, k, v, causal, kernel):
    B, H, T, D = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("flopscale::cuda_attention_bwd", mutates_args=())
def _attn_bwd_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, causal: bool,
                 kernel: int) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = _C.attention_bwd(do.contiguous(), q, k, v, o, lse, causal, kernel)
    sinks = accounting.backward_sinks()
    if sinks:
        B, H, T, D = q.shape
        accounting.book(sinks, _executed_rows(B, H, T, D, causal, _tiles(D, kernel), True), True)
    return dq, dk, dv


@_attn_bwd_op.register_fake
def _(do, q, k, v, o, lse, causal, kernel):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _attn_setup(ctx, inputs, output):
    q, k, v, causal, kernel = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.causal, ctx.kernel = causal, kernel


def _attn_op_backward(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    return (*torch.ops.flopscale.cuda_attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.kernel), None, None)


_attn_fwd_op.register_autograd(_attn_op_backward, setup_context=_attn_setup)


@flop_formula(torch.ops.flopscale.cuda_attention_fwd)
def _attn_fwd_flops(q_shape, k_shape, v_shape, causal, kernel, *args, out_shape=None, **kwargs):
    return dict(_executed_rows(*q_shape, causal, _tiles(q_shape[-1], kernel), False))["attention_mask"]


@flop_formula(torch.ops.flopscale.cuda_attention_bwd)
def _attn_bwd_flops(do_shape, q_shape, k_shape, v_shape, o_shape, lse_shape, causal, kernel, *args,
                    out_shape=None, **kwargs):
    return dict(_executed_rows(*q_shape, causal, _tiles(q_shape[-1], kernel), True))["attention_mask"]


@torch.library.custom_op("flopscale::cuda_feedforward_fwd", mutates_args=())
def _ffn_fwd_op(x2: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor,
                lt_epilogues: bool) -> tuple[Tensor, Tensor, Tensor]:
    # lt_epilogues is the backward's choice, an input here so the registered autograd sees it
    return tuple(_C.ffn_fwd(x2.contiguous(), w_in, b_in, w_out, b_out))


@_ffn_fwd_op.register_fake
def _(x2, w_in, b_in, w_out, b_out, lt_epilogues):
    M, d_ff = x2.shape[0], w_in.shape[0]
    return x2.new_empty((M, w_out.shape[0])), x2.new_empty((M, d_ff)), x2.new_empty((M, d_ff))


@torch.library.custom_op("flopscale::cuda_feedforward_bwd", mutates_args=())
def _ffn_bwd_op(dy2: Tensor, x2: Tensor, w_in: Tensor, w_out: Tensor, h_pre: Tensor, h: Tensor,
                lt_epilogues: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(_C.ffn_bwd(dy2.contiguous(), x2, w_in, w_out, h_pre, h, lt_epilogues))


@_ffn_bwd_op.register_fake
def _(dy2, x2, w_in, w_out, h_pre, h, lt_epilogues):
    d_ff, d_model = w_in.shape
    return (dy2.new_empty(x2.shape), w_in.new_empty(w_in.shape), w_in.new_empty(d_ff),
            w_out.new_empty(w_out.shape), w_out.new_empty(d_model))


def _ffn_setup(ctx, inputs, output):
    x2, w_in, b_in, w_out, b_out, lt_epilogues = inputs
    ctx.save_for_backward(x2.contiguous(), w_in, w_out, output[1], output[2])
    ctx.lt_epilogues = lt_epilogues


def _ffn_op_backward(ctx, dy, dpre, dh):
    x2, w_in, w_out, h_pre, h = ctx.saved_tensors
    return (*torch.ops.flopscale.cuda_feedforward_bwd(dy, x2, w_in, w_out, h_pre, h, ctx.lt_epilogues), None)


_ffn_fwd_op.register_autograd(_ffn_op_backward, setup_context=_ffn_setup)


@flop_formula(torch.ops.flopscale.cuda_feedforward_fwd)
def _ffn_fwd_flops(x_shape, w_in_shape, *args, out_shape=None, **kwargs):
    (M, d), d_ff = x_shape, w_in_shape[0]
    return 4 * M * d * d_ff  # two GEMMs, cuBLASLt: no padding


@flop_formula(torch.ops.flopscale.cuda_feedforward_bwd)
def _ffn_bwd_flops(dy_shape, x_shape, w_in_shape, *args, out_shape=None, **kwargs):
    (M, d), d_ff = x_shape, w_in_shape[0]
    return 8 * M * d * d_ff  # dH, dW_out, dX, dW_in


# ---------------------------------------------------------------------------------------------
# LayerNorm
# ---------------------------------------------------------------------------------------------
class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (rows, C)
        y, mean, rstd = torch.ops.flopscale.cuda_layer_norm_fwd(x2, weight, bias, eps)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = torch.ops.flopscale.cuda_layer_norm_bwd(dy.reshape(x2.shape), x2, weight, mean, rstd)
        return dx.view(ctx.shape), dw, db, None


class AddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps):
        shape = x.shape
        C = shape[-1]
        y, s, mean, rstd = torch.ops.flopscale.cuda_add_layer_norm_fwd(x.reshape(-1, C), residual.reshape(-1, C),
                                                                       weight, bias, eps)
        ctx.save_for_backward(s, weight, mean, rstd)  # s = x + residual, as rounded to x's dtype
        ctx.shape = shape
        return y.view(shape), s.view(shape)

    @staticmethod
    def backward(ctx, dy, ds):
        s, weight, mean, rstd = ctx.saved_tensors
        # autograd materialises a zero ds when s went unused, so the fused kernel always adds it
        dx, dw, db = torch.ops.flopscale.cuda_add_layer_norm_bwd(dy.reshape(s.shape), ds.reshape(s.shape), s, weight,
                                                                 mean, rstd)
        dx = dx.view(ctx.shape)
        return dx, dx, dw, db, None  # d(x + residual)/dx = d/dresidual = identity


def _match(p, x):
    # the kernels take weights in the activations' dtype; autograd casts the gradient back
    return p if p.dtype == x.dtype else p.to(x.dtype)


def layer_norm(x, weight, bias, eps=1e-5):
    w, b = _match(weight, x), _match(bias, x)
    if compiling():
        return torch.ops.flopscale.cuda_layer_norm_fwd(x.reshape(-1, x.shape[-1]), w, b, float(eps))[0].view(x.shape)
    return LayerNormFunction.apply(x, w, b, float(eps))


def add_layer_norm(x, residual, weight, bias, eps=1e-5):
    w, b = _match(weight, x), _match(bias, x)
    if compiling():
        C = x.shape[-1]
        y, s, _, _ = torch.ops.flopscale.cuda_add_layer_norm_fwd(x.reshape(-1, C), residual.reshape(-1, C), w, b,
                                                                 float(eps))
        return y.view(x.shape), s.view(x.shape)
    return AddLayerNormFunction.apply(x, residual, w, b, float(eps))


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------
class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, kernel):
        # Save dense copies: the model passes strided views of its fused QKV projection, and
        # the backward would otherwise densify them a second time.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        ctx.sinks = accounting.active_sinks()  # the backward books into the forward's ledgers
        o, lse = torch.ops.flopscale.cuda_attention_fwd(q, k, v, causal, kernel)  # o (B, H, T, D); lse fp32
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.kernel = causal, kernel
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        with accounting.scoped(ctx.sinks):
            dq, dk, dv = torch.ops.flopscale.cuda_attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.kernel)
        return dq, dk, dv, None, None


def attention(q, k, v, causal=True, kernel="auto"):
    """``kernel``: the attention option, "auto" or "mma_sync" (ATTENTION_KERNELS)."""
    if compiling():
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return torch.ops.flopscale.cuda_attention_fwd(q, k, v, bool(causal), ATTENTION_KERNELS[kernel])[0]
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
        y, h_pre, h = torch.ops.flopscale.cuda_feedforward_fwd(x2, w_in, b_in, w_out, b_out, lt_epilogues)
        ctx.save_for_backward(x2, w_in, w_out, h_pre, h)
        ctx.shape, ctx.lt_epilogues = shape, lt_epilogues
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, w_in, w_out, h_pre, h = ctx.saved_tensors
        dx, dw_in, db_in, dw_out, db_out = torch.ops.flopscale.cuda_feedforward_bwd(
            dy.reshape(-1, dy.shape[-1]), x2, w_in, w_out, h_pre, h, ctx.lt_epilogues)
        return dx.view(ctx.shape), dw_in, db_in, dw_out, db_out, None


FFN_BACKWARDS = ("split", "lt_epilogues")  # the ffn_backward option


def feedforward(x, w_in, b_in, w_out, b_out, backward="split"):
    """``backward``: the ffn_backward option, "split" or "lt_epilogues" (FFN_BACKWARDS).  Both
    compute exactly the model view's FLOPs (cuBLASLt GEMMs, no padding)."""
    ws = tuple(_match(p, x) for p in (w_in, b_in, w_out, b_out))
    if compiling():
        return torch.ops.flopscale.cuda_feedforward_fwd(x.reshape(-1, x.shape[-1]), *ws, backward == "lt_epilogues")[0].view(
            *x.shape[:-1], ws[2].shape[0])
    return FeedForwardFunction.apply(x, *ws, backward == "lt_epilogues")


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
