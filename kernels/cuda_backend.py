"""The ``cuda`` backend: csrc/ kernels (flopscale._C) behind torch.autograd.Functions.

    ops = get_backend("cuda")      # RuntimeError with one clear line if _C was not built
    y = ops.layer_norm(x, w, b, eps=1e-5)
    o = ops.attention(q, k, v, causal=True)         # (B, H, T, D), D in {64, 128}, fp16/bf16

This is the only module that imports ``flopscale._C``.  Each Function only calls the extension's
fwd/bwd and saves tensors; shapes, dtypes and devices are checked in csrc/bindings.cpp.
"""


import torch

_EXT_MISSING = (
    "flopscale was installed without its CUDA extension; reinstall on a machine with nvcc and a "
    "CUDA build of torch, FLOPSCALE_BUILD_CUDA=1 pip install --no-build-isolation -e ."
)


def _load_extension():
    try:
        from flopscale import _C
    except ImportError as e:
        raise RuntimeError(f"{_EXT_MISSING} ({e})") from None
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
    def forward(ctx, q, k, v, causal):
        # Save dense copies: the model passes strided views of its fused QKV projection, and
        # the backward would otherwise densify them a second time.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o, lse = _C.attention_fwd(q, k, v, causal)  # o (B, H, T, D); lse (B, H, T) fp32
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _C.attention_bwd(do, q, k, v, o, lse, ctx.causal)
        return dq, dk, dv, None


def attention(q, k, v, causal=True):
    return AttentionFunction.apply(q, k, v, bool(causal))


def attention_executed(B, H, T, D, causal=True, tiles=(64, 64, 64, 64)):
    """FLOPs the csrc/attention kernels really compute, tile by tile.

    Convention: FLOPs, a multiply-add is 2.  Every (query tile, key tile) pair a kernel visits is
    computed whole: ragged tails are zero-padded, the causal diagonal's masked half included.
    tiles = (fwd BLOCK_M, fwd BLOCK_N, bwd BLOCK_M, bwd BLOCK_N), from _C.attention_tiles(D).
      forward:  per pair, S = Q K^T and O += P V: 2 matmuls of 2 * BM * BN * D.
      backward: per pair, the S recompute, dV = P^T dO, dP = dO V^T, dK = dS^T Q and
                dQ = dS K: 5 matmuls of 2 * BM * BN * D.
    Softmax elements: the BM * BN scores of each pair (forward and backward separately).
    """
    from flopscale.engine.flops import softmax_flops

    fbm, fbn, bbm, bbn = tiles
    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    fwd_pairs = 0
    for mb in range(cdiv(T, fbm)):
        n_end = min(T, (mb + 1) * fbm) if causal else T
        fwd_pairs += cdiv(n_end, fbn)
    bwd_pairs = 0
    for nb in range(cdiv(T, bbn)):
        first = (nb * bbn) // bbm if causal else 0
        bwd_pairs += cdiv(T, bbm) - first
    fwd = B * H * fwd_pairs * 2 * (2 * fbm * fbn * D)
    bwd = B * H * bwd_pairs * 5 * (2 * bbm * bbn * D)
    sm_fwd, _ = softmax_flops(B * H * T, B * H * fwd_pairs * fbm * fbn)
    _, sm_bwd = softmax_flops(B * H * T, B * H * bwd_pairs * bbm * bbn)
    return {"attention_mask": (fwd, bwd), "softmax": (sm_fwd, sm_bwd)}


# ---------------------------------------------------------------------------------------------
# Feedforward (cuBLASLt with fused bias / GELU epilogues)
# ---------------------------------------------------------------------------------------------
class FeedForwardFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, b_out):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (rows, d_model)
        y, h_pre, h = _C.ffn_fwd(x2, w_in, b_in, w_out, b_out)
        ctx.save_for_backward(x2, w_in, w_out, h_pre, h)
        ctx.shape = shape
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, w_in, w_out, h_pre, h = ctx.saved_tensors
        dx, dw_in, db_in, dw_out, db_out = _C.ffn_bwd(dy.reshape(-1, dy.shape[-1]), x2, w_in, w_out, h_pre, h)
        return dx.view(ctx.shape), dw_in, db_in, dw_out, db_out


def feedforward(x, w_in, b_in, w_out, b_out):
    return FeedForwardFunction.apply(x, *(_match(p, x) for p in (w_in, b_in, w_out, b_out)))


# ---------------------------------------------------------------------------------------------
_C = None


def _executed(op, **shape):
    if op == "attention":
        D = shape["D"]
        return attention_executed(**shape, tiles=tuple(_C.attention_tiles(D)))
    return None  # LayerNorm and cuBLASLt's GEMMs compute exactly the model view


def make_backend(Backend):
    global _C
    _C = _load_extension()
    return Backend(
        name="cuda",
        layer_norm=layer_norm,
        add_layer_norm=add_layer_norm,
        attention=attention,
        feedforward=feedforward,
        executed=_executed,
    )


__all__ = ["make_backend", "attention_executed", "layer_norm", "add_layer_norm", "attention", "feedforward"]
