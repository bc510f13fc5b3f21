"""FLOP accounting: Table 1 of Kaplan et al. (2020) as code, and the ledger of what really ran.

Convention everywhere in this file: **FLOPs, a multiply-add counts 2** (a matmul of (M, K) by
(K, N) is 2*M*N*K FLOPs).  Element-wise ops count one FLOP per arithmetic operation, with a
transcendental (exp, tanh, sqrt, rsqrt, log) counted as 1.  The per-op formulas and the
per-element constants of the extra rows (LN_*, SOFTMAX_*, GELU_*, ...), each derived in a
comment, live a layer down in kernels/flop_counts.py, where the kernels book from them; this
module re-exports them (``fl.softmax_flops``, ``fl.LN_FWD``).

Three views of the same run (docs/ARCHITECTURE.md, "FLOP accounting"):

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
                backward).  Ops in the backend's ``books`` book it from each launch, with the
                tile autotune picked (kernels/accounting.py; the ledger is a sink there);
                the others take ``Backend.executed(op, **shape)`` or, failing that, the model
                view, precomputed per shape with the other two views.

Rows: the paper's Table 1 rows, then extra rows kept apart.  ``non-embedding`` rows are the
paper's C (attention_qkv, attention_mask, attention_project, feedforward).
"""

from __future__ import annotations

import threading

import torch

from flopscale.kernels import accounting
from flopscale.kernels.flop_counts import (  # re-exported (__all__): fl.LN_FWD, fl.softmax_flops, ...
    ADAMW_DECAY_PER_PARAM, ADAMW_PER_PARAM, BIAS_BWD, BIAS_FWD, CLIP_PER_PARAM, GELU_BWD, GELU_FWD,
    LN_BWD, LN_BWD_PER_ROW, LN_FWD, LN_FWD_PER_ROW, LOSS_BWD, LOSS_BWD_PER_ROW, LOSS_FWD,
    LOSS_FWD_PER_ROW, RESIDUAL_BWD, RESIDUAL_FWD, SOFTMAX_BWD, SOFTMAX_FWD, SOFTMAX_FWD_PER_ROW,
    attention_op_model, bias_flops, causal_attention_flops, causal_tile_pairs, feedforward_op_model,
    gelu_flops, layernorm_flops, linear_flops, loss_flops, optimizer_flops, residual_flops,
    softmax_flops, adafactor_flops, ADAFACTOR_DECAY_PER_PARAM, ADAFACTOR_SCALE_PER_PARAM, ADAFACTOR_MATRIX_PER_COL, ADAFACTOR_MATRIX_PER_ELEM,
    ADAFACTOR_MATRIX_PER_ROW, ADAFACTOR_VECTOR_PER_ELEM, LSTM_BIASES_PER_HIDDEN, LSTM_GATES_BWD, LSTM_GATES_FWD, lstm_layer_op_model)

# ``lstm``: the LSTM's gate matmuls (W_ih and W_hh of every layer; arch lstm), the Table 1 row the
# paper's recipe gives it (params 8*n_layer*d_model^2 = N, forward 2N per token), non-embedding;
# ``lstm_gates``: its element-wise gate math (sigmoid, tanh, products), an extra row.  Both are 0
# for the Transformers.  A universal Transformer books into the GPT's rows, every application.
TABLE1_ROWS = ("embed", "attention_qkv", "attention_mask", "attention_project", "feedforward", "lstm", "deembed")
NONEMBEDDING_ROWS = ("attention_qkv", "attention_mask", "attention_project", "feedforward", "lstm")
EXTRA_ROWS = ("layernorm", "softmax", "gelu", "bias", "residual", "loss", "optimizer", "lstm_gates")
LSTM_ROWS = ("lstm", "lstm_gates")  # the rows only an LSTM books
ROWS = TABLE1_ROWS + EXTRA_ROWS
VIEWS = ("paper", "model", "executed")


# ---------------------------------------------------------------------------------------------
# Table 1: parameters and forward FLOPs per token (the paper's view).
# ---------------------------------------------------------------------------------------------
def _shape(cfg):
    return cfg.n_layer, cfg.d_model, cfg.d_attn, cfg.d_ff, cfg.n_ctx, cfg.n_vocab


def _arch(cfg) -> str:
    return getattr(cfg, "arch", "gpt")


def table1_params(cfg) -> dict:
    """The paper's parameter counts per row (embedding rows included, biases and LN excluded).
    universal: the one shared block's weights, counted once; lstm: W_ih and W_hh of each layer,
    4*d_model x d_model each, and no position embedding."""
    L, d, da, dff, T, V = _shape(cfg)
    arch = _arch(cfg)
    if arch == "lstm":
        return {**dict.fromkeys(TABLE1_ROWS, 0), "embed": V * d, "lstm": L * 2 * 4 * d * d}
    held = 1 if arch == "universal" else L  # blocks whose weights exist
    return {
        "embed": (V + T) * d,
        "attention_qkv": held * d * 3 * da,
        "attention_mask": 0,
        "attention_project": held * da * d,
        "feedforward": held * 2 * d * dff,
        "lstm": 0,
        "deembed": 0,  # tied to embed
    }


def table1_forward_flops_per_token(cfg) -> dict:
    """The paper's forward FLOPs per token per row (a multiply-add is 2); every application of
    a universal Transformer's shared block counts.  lstm: 2 FLOPs per weight (2N) in ``lstm``,
    and embed 2*d_model, the token half of the paper's 4*d_model (there are no positions)."""
    L, d, da, dff, T, V = _shape(cfg)
    if _arch(cfg) == "lstm":
        return {**dict.fromkeys(TABLE1_ROWS, 0), "embed": 2 * d, "lstm": 2 * L * 2 * 4 * d * d, "deembed": 2 * d * V}
    return {
        "embed": 4 * d,
        "attention_qkv": 2 * L * d * 3 * da,
        "attention_mask": 2 * L * T * da,
        "attention_project": 2 * L * da * d,
        "feedforward": 2 * L * 2 * d * dff,
        "lstm": 0,
        "deembed": 2 * d * V,
    }


def non_embedding_params(cfg) -> int:
    """N = 2 * d_model * n_layer * (2 * d_attn + d_ff) (gpt); universal: the shared block once,
    2 * d_model * (2 * d_attn + d_ff); lstm: 8 * n_layer * d_model^2 (W_ih, W_hh; no biases)."""
    arch = _arch(cfg)
    if arch == "lstm":
        return 8 * cfg.n_layer * cfg.d_model ** 2
    held = 1 if arch == "universal" else cfg.n_layer
    return 2 * cfg.d_model * held * (2 * cfg.d_attn + cfg.d_ff)


def n_counts(cfg) -> str:
    """What N counts, in words (config.json's ``N_counts``)."""
    return {"gpt": "matmul weights of the n_layer blocks (biases, LayerNorms, embeddings excluded)",
            "lstm": "W_ih and W_hh of the n_layer LSTM layers (biases, LayerNorm, embedding excluded)",
            "universal": "the shared block's matmul weights, once (the block is applied n_layer times; C counts "
                         "every application)"}[_arch(cfg)]


def forward_flops_per_token(cfg) -> int:
    """C_forward: the non-embedding rows of Table 1 per token; gpt: 2N + 2 * n_layer * n_ctx *
    d_attn, universal: 2 * n_layer * N + the same mask term, lstm: 2N."""
    per_tok = table1_forward_flops_per_token(cfg)
    return sum(per_tok[r] for r in NONEMBEDDING_ROWS)


# ---------------------------------------------------------------------------------------------
# The model's ops for one (B, T) batch, and how often each runs in a forward pass.
# ---------------------------------------------------------------------------------------------
def op_counts(cfg, B: int, T: int, executed=None, booked=frozenset()) -> dict:
    """{op: {view: {row: (fwd, bwd)}}} for each op of the GPT (engine/model.py) on a (B, T)
    batch.  ``executed(op, **shape)`` is the backend's override of the model view, or None;
    ``booked``: the backend ops ("layernorm", "attention", "feedforward") whose launches book
    the executed view themselves (``Backend.books``), left empty here."""
    d, da, dff, V, H = cfg.d_model, cfg.d_attn, cfg.d_ff, cfg.n_vocab, cfg.n_heads
    Dh, BT = da // H, B * T
    per_tok = table1_forward_flops_per_token(cfg)

    def paper(row, per_layer=True):
        f = per_tok[row] // (cfg.n_layer if per_layer else 1) * BT
        return {row: (f, 2 * f)}  # the paper's training = 3 x forward

    def with_exec(model_rows, op, **shape):
        if op in booked:
            return {"model": model_rows, "executed": {}}
        ex = executed(op, **shape) if executed else None
        return {"model": model_rows, "executed": {**model_rows, **ex} if ex else model_rows}

    ln = layernorm_flops(BT, d)
    if _arch(cfg) == "lstm":
        return {
            # Token embedding only: the gather is 0 FLOPs.  Backward: the scatter-add into wte (1 per
            # element) and the add where its embedding and de-embedding gradients meet (V*d).
            "embed": {"paper": {"embed": (per_tok["embed"] * BT, 2 * per_tok["embed"] * BT)},
                      "model": {"embed": (0, BT * d + V * d)}},
            "lstm": {"paper": paper("lstm"), "model": lstm_layer_op_model(BT, d, d)},
            "ln": with_exec({"layernorm": ln}, "layernorm", rows=BT, C=d),
            "deembed": {"paper": paper("deembed", per_layer=False), "model": {"deembed": linear_flops(BT, d, V)}},
            "loss": {"model": {"loss": loss_flops(BT, V)}},
        }
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
    the residual add before it fused in.  universal: the same, its one block applied L times;
    lstm: each layer once, then the final LayerNorm."""
    L = cfg.n_layer
    if _arch(cfg) == "lstm":
        return {"embed": 1, "lstm": L, "ln": 1, "deembed": 1, "loss": 1}
    return {"embed": 1, "ln": 1, "add_ln": 2 * L, "qkv": L, "attn": L, "proj": L, "ffn": L, "deembed": 1, "loss": 1}


def expected_rows(cfg, B: int, T: int, view: str = "model", executed=None, booked=frozenset()) -> dict:
    """{row: (fwd, bwd)} of one forward+backward of the GPT on a (B, T) batch, from
    ``op_counts`` times ``op_multiplicity`` (no optimizer step); in the executed view, without
    what the ``booked`` ops' launches add."""
    out = {r: [0, 0] for r in ROWS}
    counts = op_counts(cfg, B, T, executed, booked)
    for op, k in op_multiplicity(cfg).items():
        rows = counts[op].get(view, counts[op]["model"] if view == "executed" else {})
        for row, (f, b) in rows.items():
            out[row][0] += k * f
            out[row][1] += k * b
    return {r: tuple(v) for r, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The ledger.
# ---------------------------------------------------------------------------------------------
_local = threading.local()  # the backward bookings ``record`` holds until ``record_backward``


def active_ledgers() -> tuple:
    """The ledgers open on this thread (innermost last): kernels/accounting.py's sink stack,
    which every open FlopLedger is on (and only ledgers are)."""
    return accounting.active_sinks()


# Every (view, row) cell has a slot in two flat lists (forward, backward): ``record`` runs once
# per op per pass, and a list index is the cheapest add Python has.
_SLOT = {(v, r): i for i, (v, r) in enumerate((v, r) for v in VIEWS for r in ROWS)}
_EXECUTED = {r: _SLOT[("executed", r)] for r in ROWS}  # the slots a launch books into


class FlopLedger:
    """Counts the FLOPs of every op that runs inside ``with FlopLedger() as ledger:``.

    Ops report through :func:`record` (the views precomputed per shape): forward counts when
    they run, backward counts when autograd really runs their backward.  Kernels book the
    executed view of their launches through ``book_executed``: the ledger is a sink of
    kernels/accounting.py while it is open.  Counts are Python ints (exact, no overflow).
    """

    def __init__(self):
        self._fwd = [0] * len(_SLOT)
        self._bwd = [0] * len(_SLOT)

    # -- context -------------------------------------------------------------------------
    # The stack is a tuple, replaced on enter and exit, so ``record`` reads it without a copy.
    def __enter__(self):
        accounting.push(self)
        return self

    def __exit__(self, *exc):
        accounting.pop(self)
        return False

    # -- recording -----------------------------------------------------------------------
    def add(self, view: str, row: str, fwd: int = 0, bwd: int = 0) -> None:
        i = _SLOT[(view, row)]
        self._fwd[i] += int(fwd)
        self._bwd[i] += int(bwd)

    def book_executed(self, rows, backward: bool = False) -> None:
        """A kernel launch's executed FLOPs, ((row, FLOPs), ...) (kernels/accounting.py)."""
        c = self._bwd if backward else self._fwd
        for row, f in rows:
            c[_EXECUTED[row]] += f

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
        for (v, r), i in _SLOT.items():  # a row added since the state was saved reads as 0
            self._fwd[i], self._bwd[i] = (int(x) for x in state[v].get(r, (0, 0)))


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
        # A compiled pass's custom ops book their backward launches where this points, on
        # whichever thread autograd runs them (kernels/accounting.py), until the backward ends.
        accounting.set_backward_sinks(ctx.pending[-1][0])
        torch.autograd.Variable._execution_engine.queue_callback(_clear_backward_sinks)
        for ledgers, bookings in ctx.pending:
            for led in ledgers:
                c = led._bwd
                for i, _, b in bookings:
                    c[i] += b
        return g, None


def _clear_backward_sinks() -> None:
    accounting.set_backward_sinks(())


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
    ledgers = accounting.active_sinks()
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

# The module's API, the formulas it re-exports from kernels/flop_counts.py included.
__all__ = [
    "TABLE1_ROWS", "NONEMBEDDING_ROWS", "EXTRA_ROWS", "LSTM_ROWS", "ROWS", "VIEWS", "table1_params",
    "table1_forward_flops_per_token", "non_embedding_params", "n_counts", "forward_flops_per_token",
    "adafactor_flops", "ADAFACTOR_DECAY_PER_PARAM", "ADAFACTOR_SCALE_PER_PARAM", "ADAFACTOR_MATRIX_PER_COL", "ADAFACTOR_MATRIX_PER_ELEM",
    "ADAFACTOR_MATRIX_PER_ROW", "ADAFACTOR_VECTOR_PER_ELEM", "LSTM_BIASES_PER_HIDDEN", "LSTM_GATES_BWD", "LSTM_GATES_FWD", "lstm_layer_op_model",
    "op_counts", "op_multiplicity", "expected_rows", "active_ledgers", "FlopLedger",
    "compile_counts", "record", "record_backward", "record_step", "ADAMW_DECAY_PER_PARAM",
    "ADAMW_PER_PARAM", "BIAS_BWD", "BIAS_FWD", "CLIP_PER_PARAM", "GELU_BWD", "GELU_FWD", "LN_BWD",
    "LN_BWD_PER_ROW", "LN_FWD", "LN_FWD_PER_ROW", "LOSS_BWD", "LOSS_BWD_PER_ROW", "LOSS_FWD",
    "LOSS_FWD_PER_ROW", "RESIDUAL_BWD", "RESIDUAL_FWD", "SOFTMAX_BWD", "SOFTMAX_FWD",
    "SOFTMAX_FWD_PER_ROW", "attention_op_model", "bias_flops", "causal_attention_flops",
    "causal_tile_pairs", "feedforward_op_model", "gelu_flops", "layernorm_flops", "linear_flops",
    "loss_flops", "optimizer_flops", "residual_flops", "softmax_flops",
]
