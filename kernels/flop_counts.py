"""FLOP formulas of every op, at the kernels' layer (stdlib only: every layer may import it).

Convention everywhere in this file: **FLOPs, a multiply-add counts 2** (a matmul of (M, K) by
(K, N) is 2*M*N*K FLOPs).  Element-wise ops count one FLOP per arithmetic operation, with a
transcendental (exp, tanh, sqrt, rsqrt, log) counted as 1; the per-element constants below say
how each is derived.

What lives here: the per-element constants of the extra rows, the model-view (exact algorithmic)
count of each op for a shape, and ``causal_tile_pairs``, the tile count every backend's
executed view of attention is built on.  engine/flops.py (Table 1, the ledger, ``op_counts``)
re-exports all of it; kernels/*.py use it to book what their launches computed.
"""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------
# Per-element constants of the extra rows (FLOPs per element unless "PER_ROW").
# ---------------------------------------------------------------------------------------------
# LayerNorm forward, per element: mean (1 add), x - mean (1 sub), square (1 mul), variance
# sum (1 add), multiply by rstd (1 mul), affine w*xhat + b (1 mul + 1 add) = 7.
# Per row: mean /C, var /C, + eps, rsqrt = 4.
LN_FWD = 7
LN_FWD_PER_ROW = 4
# LayerNorm backward, per element (xhat kept from forward): dxhat = dy*w (1), dW += dy*xhat
# (2), dB += dy (1), sum(xhat*dxhat) (2), sum(dxhat) (1), dx = (dxhat - xhat*c1 - c2) * rstd
# (mul, sub, sub, mul = 4) = 11.  Per row: c1 /C, c2 /C = 2.
LN_BWD = 11
LN_BWD_PER_ROW = 2
# Softmax forward over attention scores, per score element: scale by 1/sqrt(D) (1 mul), row
# max (1 cmp), subtract max (1), exp (1), row sum (1 add), normalise (1 mul by 1/sum) = 6.
# Per row: the reciprocal of the sum = 1.
SOFTMAX_FWD = 6
SOFTMAX_FWD_PER_ROW = 1
# Softmax backward, per element: dP*P (1 mul), row sum of it (1 add), dP - sum (1 sub),
# times P (1 mul), times the scale (1 mul) = 5.
SOFTMAX_BWD = 5
# GELU (tanh approximation) forward, per element: x*x*x (2 mul), 0.044715*x^3 (1 mul), + x (1),
# * sqrt(2/pi) (1 mul), tanh (1), 1 + t (1), x * (1 + t) (1 mul), * 0.5 (1 mul) = 9.
GELU_FWD = 9
# GELU backward, per element: recompute u and t = tanh(u) (x*x, *x, *a, +x, *c, tanh = 6);
# 0.5*(1+t) (2); 1 - t*t (2); 1 + 3a*x^2 (2, x^2 reused); * c (1); * (1 - t^2) (1);
# * 0.5*x (2); sum of the two terms (1); * dy (1) = 6 + 13 = 19.
GELU_BWD = 19
# Bias: forward 1 add per output element; backward the column sum, 1 add per element.
BIAS_FWD = 1
BIAS_BWD = 1
# Residual add: forward 1 add per element; backward, where the skip and the branch gradients
# meet, 1 add per element.
RESIDUAL_FWD = 1
RESIDUAL_BWD = 1
# Cross-entropy over the vocabulary, per logit: max (1 cmp), subtract (1), exp (1), sum (1) = 4.
# Per row: log of the sum (1), + max (1), - the target logit (1), add into the mean (1) = 4.
LOSS_FWD = 4
LOSS_FWD_PER_ROW = 4
# Backward per logit: recompute p = exp(x - lse) (2), scale by 1/n_rows (1) = 3.
# Per row: subtract 1 at the target (1).
LOSS_BWD = 3
LOSS_BWD_PER_ROW = 1
# AdamW, per parameter and step: m = b1*m + (1-b1)*g (3); v = b2*v + (1-b2)*g*g (4);
# m/bc1 (1), v/bc2 (1), sqrt (1), + eps (1), divide (1), * lr (1), p - update (1) = 14.
# Decoupled weight decay p *= (1 - lr*wd): 1 more on decayed parameters.
ADAMW_PER_PARAM = 14
ADAMW_DECAY_PER_PARAM = 1
# LSTM cell (torch.nn.LSTM's equations), per hidden element h_t[j] of one layer and token; the
# four gate pre-activations are z = W_ih x + b_ih + W_hh h_{t-1} + b_hh (the two matmuls are the
# ``lstm`` row, the two bias adds the ``bias`` row: 2 per gate element, 8 per hidden element).
# Forward: the two matmul outputs summed, 1 add per gate element (4); sigmoid of i, f, o as
# 1 / (1 + exp(-z)): negate, exp, add, divide = 4 each (12); tanh of g (1);
# c = f*c_prev + i*g (2 mul + 1 add = 3); h = o * tanh(c) (tanh 1 + mul 1 = 2); total 22.
LSTM_GATES_FWD = 22
# Backward, per hidden element, given dh (from the layer above plus the recurrent dh, 1 add where
# they meet) and dc from step t+1, with tanh(c) and the gates kept from the forward:
# do = dh*tanh(c) (1); dh*o*(1 - tanh(c)^2) (mul, square, sub, mul = 4); dc = dc_next + that (1);
# df = dc*c_prev, dc_prev = dc*f, di = dc*g, dg = dc*i (4); sigmoid' for i, f, o as
# dz = da*s*(1 - s) (sub, mul, mul = 3 each: 9); tanh' for g, dz = dg*(1 - g^2) (3); the meeting
# of the upward and recurrent dh (1); total 1 + 4 + 1 + 4 + 9 + 3 + 1 = 23.  Step 0 is counted like
# every other (torch multiplies by the zero initial state too).
LSTM_GATES_BWD = 23
# The LSTM's biases: two per gate element (b_ih, b_hh), forward 1 add each; backward one column
# sum each, 1 add per element: BIAS_FWD, BIAS_BWD times 2 * 4 * d per token and layer.
LSTM_BIASES_PER_HIDDEN = 8
# Adafactor (engine/optim.py, Shazeer & Stern 2018: no first moment, the second moment of a
# matrix factored into row and column means), per step.  Every parameter: the update
# rsqrt(clamp(v)) (clamp, rsqrt = 2), times the gradient (1), its RMS for update clipping (square +
# add = 2), param -= alpha * update (mul + add = 2): 7.  A matrix (R, C) adds, per element: the row
# and column norms of the gradient (square + add each = 4), the outer product row_var @ col_var
# (1 mul: K = 1), the division by the mean of row_var (1) = 6, so 13; per row: the norm's square
# and /C (2), the lerp into row_var (a + w(b - a) = 3), its share of the mean (1) = 6; per column:
# square and /R (2), lerp (3) = 5.  A vector adds g*g (1) and the lerp into v (3) = 4, so 11.
# Weight decay p *= (1 - lr*wd): 1 per decayed element.  With parameter scaling
# (--adafactor-scale-parameter), RMS(param) for the step: square + add = 2 per element.
ADAFACTOR_MATRIX_PER_ELEM = 13
ADAFACTOR_MATRIX_PER_ROW = 6
ADAFACTOR_MATRIX_PER_COL = 5
ADAFACTOR_VECTOR_PER_ELEM = 11
ADAFACTOR_DECAY_PER_PARAM = 1
ADAFACTOR_SCALE_PER_PARAM = 2
# Gradient clipping by global norm, per parameter: square (1), add into the norm (1), scale
# by the clip coefficient (1) = 3.  (The scale is applied whether or not it clips.)
CLIP_PER_PARAM = 3


# ---------------------------------------------------------------------------------------------
# Exact per-op counts (the model view) for the shapes that ran: (fwd, bwd), or {row: (fwd, bwd)}.
# ---------------------------------------------------------------------------------------------
def linear_flops(rows: int, d_in: int, d_out: int) -> tuple:
    """(fwd, bwd) of y = x W^T for x (rows, d_in): fwd 2*rows*d_in*d_out; bwd dX + dW = 2x."""
    f = 2 * rows * d_in * d_out
    return f, 2 * f


def causal_attention_flops(B: int, H: int, T: int, d_head: int) -> tuple:
    """Model-view (fwd, bwd) of causal QK^T and AV: 2*T*(T+1)*d_head per (b, h) forward."""
    f = 2 * B * H * T * (T + 1) * d_head
    return f, 2 * f


def layernorm_flops(rows: int, C: int) -> tuple:
    return LN_FWD * rows * C + LN_FWD_PER_ROW * rows, LN_BWD * rows * C + LN_BWD_PER_ROW * rows


def softmax_flops(rows: int, elems: int) -> tuple:
    return SOFTMAX_FWD * elems + SOFTMAX_FWD_PER_ROW * rows, SOFTMAX_BWD * elems


def gelu_flops(elems: int) -> tuple:
    return GELU_FWD * elems, GELU_BWD * elems


def bias_flops(elems: int) -> tuple:
    return BIAS_FWD * elems, BIAS_BWD * elems


def residual_flops(elems: int) -> tuple:
    return RESIDUAL_FWD * elems, RESIDUAL_BWD * elems


def loss_flops(rows: int, V: int) -> tuple:
    return (LOSS_FWD * rows * V + LOSS_FWD_PER_ROW * rows,
            LOSS_BWD * rows * V + LOSS_BWD_PER_ROW * rows)


def optimizer_flops(n_params: int, n_decayed: int, clip: bool) -> int:
    return ADAMW_PER_PARAM * n_params + ADAMW_DECAY_PER_PARAM * n_decayed + (CLIP_PER_PARAM * n_params if clip else 0)


def adafactor_flops(shapes, n_decayed: int, clip: bool, scale_parameter: bool = False) -> int:
    """One Adafactor step over parameters of these shapes (the last two dims of a tensor with 2+
    dims are factored; leading dims are a batch of matrices)."""
    total, n = 0, 0
    for shape in shapes:
        numel = 1
        for s in shape:
            numel *= s
        n += numel
        if len(shape) >= 2:
            R, C = shape[-2], shape[-1]
            mats = numel // (R * C)
            total += ADAFACTOR_MATRIX_PER_ELEM * numel + mats * (ADAFACTOR_MATRIX_PER_ROW * R + ADAFACTOR_MATRIX_PER_COL * C)
        else:
            total += ADAFACTOR_VECTOR_PER_ELEM * numel
    return (total + ADAFACTOR_DECAY_PER_PARAM * n_decayed + (CLIP_PER_PARAM * n if clip else 0)
            + (ADAFACTOR_SCALE_PER_PARAM * n if scale_parameter else 0))


def attention_op_model(B: int, H: int, T: int, d_head: int) -> dict:
    """Model view of the attention op: the causal matmuls and the causal softmax."""
    causal_elems = B * H * T * (T + 1) // 2
    return {
        "attention_mask": causal_attention_flops(B, H, T, d_head),
        "softmax": softmax_flops(B * H * T, causal_elems),
    }


def feedforward_op_model(rows: int, d_model: int, d_ff: int) -> dict:
    f1, b1 = linear_flops(rows, d_model, d_ff)
    f2, b2 = linear_flops(rows, d_ff, d_model)
    bf, bb = bias_flops(rows * (d_ff + d_model))
    return {"feedforward": (f1 + f2, b1 + b2), "gelu": gelu_flops(rows * d_ff), "bias": (bf, bb)}


def lstm_layer_op_model(rows: int, d_in: int, d_hidden: int) -> dict:
    """Model view of one LSTM layer over ``rows`` = B*T tokens: the gate matmuls W_ih (4h, d_in)
    and W_hh (4h, h), the gate element-wise math, the two bias adds per gate element."""
    fi, bi = linear_flops(rows, d_in, 4 * d_hidden)
    fh, bh = linear_flops(rows, d_hidden, 4 * d_hidden)
    e = rows * d_hidden
    bf, bb = bias_flops(LSTM_BIASES_PER_HIDDEN * e)
    return {"lstm": (fi + fh, bi + bh), "lstm_gates": (LSTM_GATES_FWD * e, LSTM_GATES_BWD * e), "bias": (bf, bb)}


# ---------------------------------------------------------------------------------------------
# Whole tiles: what a tiled kernel computes.
# ---------------------------------------------------------------------------------------------
def causal_tile_pairs(T: int, block_m: int, block_n: int, causal: bool = True) -> int:
    """(query tile, key tile) pairs a flash-style kernel computes over one (b, h) slice.

    Queries are cut into tiles of ``block_m`` rows, keys into tiles of ``block_n`` columns, both
    on the grid that starts at 0; a ragged last tile of either counts whole (it is computed
    zero-padded).  Non-causal: every pair.  Causal: every pair holding at least one unmasked
    score (key j <= query i, both < T), the diagonal's masked part computed too.

    Loop order does not change the count: a kernel with one program per query tile looping
    over key tiles 0 .. the diagonal (forward, dQ) and one with a program per key tile looping
    over query tiles from the diagonal down (dK/dV) visit the same set of pairs, provided the
    loop starts on the other operand's grid.  That holds when the tile sizes divide each other
    the way the kernels require (kernels/attention.py, csrc/attention); per query tile
    ``m0 = mb * block_m`` the causal count is cdiv(min(m0 + block_m, T), block_n).
    """
    if T <= 0:
        return 0
    if not causal:
        return cdiv(T, block_m) * cdiv(T, block_n)
    return sum(cdiv(min(m0 + block_m, T), block_n) for m0 in range(0, T, block_m))


def padded_matmul_flops(M: int, N: int, K: int, block_m: int, block_n: int, block_k: int) -> int:
    """A tiled (M, K) x (K, N) matmul computing whole (block_m, block_n, block_k) tiles:
    2 * (M, N, K each rounded up to its tile)."""
    return 2 * cdiv(M, block_m) * block_m * cdiv(N, block_n) * block_n * cdiv(K, block_k) * block_k
