"""FLOP accounting: Table 1 of Kaplan et al. (2020) as code, and the ledger of what really ran.

Convention everywhere in this file: **FLOPs, a multiply-add counts 2** (a matmul of (M, K) by
(K, N) is 2*M*N*K FLOPs).  Element-wise ops count one FLOP per arithmetic operation, with a
transcendental (exp, tanh, sqrt, rsqrt, log) counted as 1; the per-element constants below say
how each is derived.

Three views of the same run (DESIGN.md, "FLOP accounting"):

* ``paper``:    Table 1 per token times the tokens that ran; the attention mask row uses
                n_ctx whatever T was; backward = 2 x forward; extra rows are 0 (the paper
                omits them).
* ``model``:    the exact algorithmic work for the shapes that ran.  Linear rows equal the
                paper's.  Causal attention over T tokens does sum_{i=1..T} (2*i*d_attn for
                QK^T + 2*i*d_attn for AV) = 2*T*(T+1)*d_attn per layer and sequence.  The
                backward of a matmul is exactly 2 x its forward (dX and dW).  This is the C
                used for fitting.
* ``executed``: what the backend's kernels really computed (full T x T scores in the eager
                reference, whole tiles on the causal diagonal and recompute in a flash-style
                backward).  Each backend reports it through ``Backend.executed``; ops it does
                not override equal the model view.

Rows: the paper's Table 1 rows, then extra rows kept apart.  ``non-embedding`` rows are the
paper's C (attention_qkv, attention_mask, attention_project, feedforward).
"""

from __future__ import annotations

import threading

import torch

TABLE1_ROWS = ("embed", "attention_qkv", "attention_mask", "attention_project", "feedforward", "deembed")
NONEMBEDDING_ROWS = ("attention_qkv", "attention_mask", "attention_project", "feedforward")
EXTRA_ROWS = ("layernorm", "softmax", "gelu", "bias", "residual", "loss", "optimizer")
ROWS = TABLE1_ROWS + EXTRA_ROWS
VIEWS = ("paper", "model", "executed")

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
# Gradient clipping by global norm, per parameter: square (1), add into the norm (1), scale
# by the clip coefficient (1) = 3.  (The scale is applied whether or not it clips.)
CLIP_PER_PARAM = 3


# ---------------------------------------------------------------------------------------------
# Table 1: parameters and forward FLOPs per token (the paper's view).
# ---------------------------------------------------------------------------------------------
def _shape(cfg):
    return cfg.n_layer, cfg.d_model, cfg.d_attn, cfg.d_ff, cfg.n_ctx, cfg.n_vocab


def table1_params(cfg) -> dict:
    """The paper's parameter counts per row (embedding rows included, biases and LN excluded)."""
    L, d, da, dff, T, V = _shape(cfg)
    return {
        "embed": (V + T) * d,
        "attention_qkv": L * d * 3 * da,
        "attention_mask": 0,
        "attention_project": L * da * d,
        "feedforward": L * 2 * d * dff,
        "deembed": 0,  # tied to embed
    }


def table1_forward_flops_per_token(cfg) -> dict:
    """The paper's forward FLOPs per token per row (a multiply-add is 2)."""
    L, d, da, dff, T, V = _shape(cfg)
    return {
        "embed": 4 * d,
        "attention_qkv": 2 * L * d * 3 * da,
        "attention_mask": 2 * L * T * da,
        "attention_project": 2 * L * da * d,
        "feedforward": 2 * L * 2 * d * dff,
        "deembed": 2 * d * V,
    }


def non_embedding_params(cfg) -> int:
    """N = 2 * d_model * n_layer * (2 * d_attn + d_ff)."""
    return 2 * cfg.d_model * cfg.n_layer * (2 * cfg.d_attn + cfg.d_ff)


def forward_flops_per_token(cfg) -> int:
    """C_forward = 2N + 2 * n_layer * n_ctx * d_attn (non-embedding, per token)."""
    return 2 * non_embedding_params(cfg) + 2 * cfg.n_layer * cfg.n_ctx * cfg.d_attn


# ---------------------------------------------------------------------------------------------
# Exact per-op counts for the shapes that ran.  Each returns {row: (fwd, bwd)}.
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


# ---------------------------------------------------------------------------------------------
# The model's ops for one (B, T) batch, and how often each runs in a forward pass.
# ---------------------------------------------------------------------------------------------
def op_counts(cfg, B: int, T: int, executed=None) -> dict:
    """{op: {view: {row: (fwd, bwd)}}} for each op of the GPT (engine/model.py) on a (B, T)
    batch.  ``executed(op, **shape)`` is the backend's override of the model view, or None."""
    d, da, dff, V, H = cfg.d_model, cfg.d_attn, cfg.d_ff, cfg.n_vocab, cfg.n_heads
    Dh, BT = da // H, B * T
    per_tok = table1_forward_flops_per_token(cfg)

    def paper(row, per_layer=True):
        f = per_tok[row] // (cfg.n_layer if per_layer else 1) * BT
        return {row: (f, 2 * f)}  # the paper's training = 3 x forward

    def with_exec(model_rows, op, **shape):
        ex = executed(op, **shape) if executed else None
        return {"model": model_rows, "executed": {**model_rows, **ex} if ex else model_rows}

    ln = layernorm_flops(BT, d)
    return {
        # Embedding lookup is a gather (0 FLOPs); the position add is 1 FLOP per element.
        # Backward: scatter-add into wte and the batch sum into wpe (1 each per element), plus
        # one add per element of wte where its embedding and de-embedding gradients meet.
        "embed": {"paper": {"embed": (per_tok["embed"] * BT, 2 * per_tok["embed"] * BT)},
                  "model": {"embed": (BT * d, 2 * BT * d + V * d)}},
        "ln": with_exec({"layernorm": ln}, "layernorm", rows=BT, C=d),
        "add_ln": with_exec({"layernorm": ln, "residual": residual_flops(BT * d)}, "layernorm", rows=BT, C=d),
        "qkv": {"paper": paper("attention_qkv"),
                "model": {"attention_qkv": linear_flops(BT, d, 3 * da), "bias": bias_flops(BT * 3 * da)}},
        "attn": {"paper": paper("attention_mask"),
                 **with_exec(attention_op_model(B, H, T, Dh), "attention", B=B, H=H, T=T, D=Dh, causal=True)},
        "proj": {"paper": paper("attention_project"),
                 "model": {"attention_project": linear_flops(BT, da, d), "bias": bias_flops(BT * d)}},
        "ffn": {"paper": paper("feedforward"),
                **with_exec(feedforward_op_model(BT, d, dff), "feedforward", rows=BT, d_model=d, d_ff=dff)},
        "deembed": {"paper": paper("deembed", per_layer=False), "model": {"deembed": linear_flops(BT, d, V)}},
        "loss": {"model": {"loss": loss_flops(BT, V)}},
    }


def op_multiplicity(cfg) -> dict:
    """How often each op of ``op_counts`` runs in one forward pass of the GPT: the first
    LayerNorm stands alone; every later one (ln2 of each block, ln1 of blocks 2..L, ln_f) has
    the residual add before it fused in."""
    L = cfg.n_layer
    return {"embed": 1, "ln": 1, "add_ln": 2 * L, "qkv": L, "attn": L, "proj": L, "ffn": L, "deembed": 1, "loss": 1}


def expected_rows(cfg, B: int, T: int, view: str = "model", executed=None) -> dict:
    """{row: (fwd, bwd)} of one forward+backward of the GPT on a (B, T) batch, from
    ``op_counts`` times ``op_multiplicity`` (no optimizer step)."""
    out = {r: [0, 0] for r in ROWS}
    counts = op_counts(cfg, B, T, executed)
    for op, k in op_multiplicity(cfg).items():
        rows = counts[op].get(view, counts[op]["model"] if view == "executed" else {})
        for row, (f, b) in rows.items():
            out[row][0] += k * f
            out[row][1] += k * b
    return {r: tuple(v) for r, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The ledger.
# ---------------------------------------------------------------------------------------------
_local = threading.local()


def active_ledgers() -> tuple:
    """The ledgers open on this thread (innermost last)."""
    return getattr(_local, "stack", ())


# Every (view, row) cell has a slot in two flat lists (forward, backward): ``record`` runs once
# per op per pass, and a list index is the cheapest add Python has.
_SLOT = {(v, r): i for i, (v, r) in enumerate((v, r) for v in VIEWS for r in ROWS)}


class FlopLedger:
    """Counts the FLOPs of every op that runs inside ``with FlopLedger() as ledger:``.

    Ops report through :func:`record`: forward counts when they run, backward counts when
    autograd really runs their backward.  Counts are Python ints (exact, no overflow).
    """

    def __init__(self):
        self._fwd = [0] * len(_SLOT)
        self._bwd = [0] * len(_SLOT)

    # -- context -------------------------------------------------------------------------
    # The stack is a tuple, replaced on enter and exit, so ``record`` reads it without a copy.
    def __enter__(self):
        _local.stack = active_ledgers() + (self,)
        return self

    def __exit__(self, *exc):
        _local.stack = tuple(led for led in active_ledgers() if led is not self)
        return False

    # -- recording -----------------------------------------------------------------------
    def add(self, view: str, row: str, fwd: int = 0, bwd: int = 0) -> None:
        i = _SLOT[(view, row)]
        self._fwd[i] += int(fwd)
        self._bwd[i] += int(bwd)

    def merge(self, other: "FlopLedger", scale: int = 1) -> None:
        for i in range(len(_SLOT)):
            self._fwd[i] += other._fwd[i] * scale
            self._bwd[i] += other._bwd[i] * scale

    # -- reading -------------------------------------------------------------------------
    def rows(self, view: str = "model") -> dict:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
        return {r: {"fwd": self._fwd[_SLOT[(view, r)]], "bwd": self._bwd[_SLOT[(view, r)]]} for r in ROWS}

    def total(self, view: str = "model", rows: str = "nonembedding", passes=("fwd", "bwd")) -> int:
        """Sum over rows: ``"nonembedding"`` (the paper's C), ``"table1"`` or ``"all"``."""
        names = {"nonembedding": NONEMBEDDING_ROWS, "table1": TABLE1_ROWS, "all": ROWS}.get(rows)
        if names is None:
            raise ValueError(f"unknown row set {rows!r}; choose nonembedding, table1 or all")
        r = self.rows(view)
        return sum(r[n][p] for n in names for p in passes)

    def to_dict(self) -> dict:
        return {v: self.rows(v) for v in VIEWS}

    def state_dict(self) -> dict:
        return {v: {r: [self._fwd[_SLOT[(v, r)]], self._bwd[_SLOT[(v, r)]]] for r in ROWS} for v in VIEWS}

    def load_state_dict(self, state: dict) -> None:
        for (v, r), i in _SLOT.items():
            self._fwd[i], self._bwd[i] = (int(x) for x in state[v][r])


def compile_counts(counts: dict) -> tuple:
    """``{view: {row: (fwd, bwd)}}`` -> a flat tuple of (slot, fwd, bwd) bookings, the form
    ``record`` books fastest (it runs once per op per pass).  ``executed`` defaults to
    ``model``; all-zero cells are left out."""
    if isinstance(counts, tuple):
        return counts
    if "executed" not in counts and "model" in counts:
        counts = dict(counts, executed=counts["model"])
    return tuple((_SLOT[(view, row)], int(f), int(b)) for view, rows in counts.items()
                 for row, (f, b) in rows.items() if f or b)


class _BackwardTap(torch.autograd.Function):
    """Identity whose backward books the backward FLOPs of the ops recorded before it."""

    @staticmethod
    def forward(ctx, x, pending):
        ctx.pending = pending
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        for ledgers, bookings in ctx.pending:
            for led in ledgers:
                c = led._bwd
                for i, _, b in bookings:
                    c[i] += b
        return g, None


def _pending() -> list:
    if not hasattr(_local, "pending"):
        _local.pending = []
    return _local.pending


def record(out: torch.Tensor, counts) -> torch.Tensor:
    """Book an op's FLOPs: ``counts[view][row] = (fwd, bwd)`` or ``compile_counts`` of it.

    Forward counts are booked now in every open ledger.  Backward counts wait until autograd
    really runs the backward: they are held until :func:`record_backward` puts one tap on the
    pass's output (the loss), whose backward books them all.  (One tap per pass rather than
    one per op: a tap costs ~15 us of autograd bookkeeping, over 1% of a small model's step.)
    Views missing from ``counts`` get nothing; ``executed`` defaults to ``model``.
    """
    ledgers = getattr(_local, "stack", ())
    if not ledgers:
        return out
    bookings = counts if type(counts) is tuple else compile_counts(counts)
    for led in ledgers:
        c = led._fwd
        for i, f, _ in bookings:
            c[i] += f
    if out.requires_grad and torch.is_grad_enabled():
        _pending().append((ledgers, bookings))
    return out


def record_backward(out: torch.Tensor) -> torch.Tensor:
    """Close a forward pass: the backward through ``out`` (returned, to be used in its place)
    books the backward FLOPs of every op recorded since the last call.  Without grad, the held
    bookings are dropped: there will be no backward."""
    pending = _pending()
    held = list(pending)
    pending.clear()
    if held and torch.is_grad_enabled() and out.requires_grad:
        out = _BackwardTap.apply(out, held)
    return out


def record_step(counts) -> None:
    """Book work that has no output tensor (the optimizer step), ``counts[view][row] = (f, b)``."""
    for led in active_ledgers():
        for i, f, b in compile_counts(counts):
            led._fwd[i] += f
            led._bwd[i] += b
