"""A GPT-2-style decoder-only Transformer whose every op books its exact FLOPs.

    from flopscale.engine import ModelConfig, GPT, FlopLedger
    model = GPT(ModelConfig(n_layer=2, d_model=64, n_heads=4, n_ctx=32, n_vocab=256), backend="torch")
    with FlopLedger() as ledger:
        logits, loss = model(idx, targets)
        loss.backward()
    ledger.total("model")

As in Kaplan et al. (2020): learned positional embeddings, pre-LayerNorm blocks, causal
multi-head attention, GELU (tanh) feedforward, a final LayerNorm and a de-embedding tied to
the token embedding.  LayerNorm, attention and the feedforward block go through the backend
(``torch``, ``triton`` or ``cuda``); the QKV and output projections are plain matmuls.  Each
residual add is fused into the LayerNorm that follows it (``add_layer_norm``).

``arch`` (ModelConfig): ``gpt``; ``universal``, one block applied n_layer times (its weights
shared: N counts them once, C every application; Dehghani et al. 2018, Kaplan et al. Figure 17);
``lstm`` (:class:`LSTMLM`), n_layer torch.nn.LSTM layers of width d_model between the same token
embedding (no positions), final LayerNorm, tied de-embedding and loss (Figure 7).  Both are
:class:`LanguageModel` s: the embedding, final LayerNorm, tied de-embedding, loss, ledger bookings
and ``forward`` are written once there.  ``make_model`` builds whichever the config names.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from flopscale.kernels import get_backend
from flopscale.kernels.cross_entropy import linear_cross_entropy

from . import flops as fl
from .config import ConfigError, ModelConfig


def _amp(*ts):
    """Autocast does not reach inside custom autograd Functions: cast a backend op's inputs to
    the autocast dtype ourselves, as F.linear would be cast (a no-op outside autocast)."""
    dev = ts[0].device.type
    if not torch.is_autocast_enabled(dev):
        return ts if len(ts) > 1 else ts[0]
    dt = torch.get_autocast_dtype(dev)
    out = tuple(t.to(dt) for t in ts)
    return out if len(out) > 1 else out[0]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, da, dff = cfg.d_model, cfg.d_attn, cfg.d_ff
        self.ln1_w, self.ln1_b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.qkv = nn.Linear(d, 3 * da)
        self.proj = nn.Linear(da, d)
        self.ln2_w, self.ln2_b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.fc_in = nn.Linear(d, dff)
        self.fc_out = nn.Linear(dff, d)


LOSS_IMPLS = ("full", "chunked")  # F.linear + fp32 cross-entropy | kernels/cross_entropy.py


class LanguageModel(nn.Module):
    """What every architecture shares: the token embedding, the final LayerNorm, the tied
    de-embedding and loss (``_head``), the ledger's bookings per pass and ``forward``.  A subclass
    builds its layers between ``super().__init__`` (which makes the embedding) and
    ``_final_norm()`` (module order, and so the parameters' init order, is embedding, layers, final
    LayerNorm), and implements ``_core`` and ``num_params``."""

    def __init__(self, cfg: ModelConfig, backend: str = "torch", kernel_options: dict | None = None,
                 loss_impl: str = "full"):
        """``kernel_options``: the backend's kernel choices (flopscale.kernels.BACKEND_OPTIONS;
        ``kernel_options_for`` builds them from a run's fields); None: the defaults.
        ``loss_impl``: "full" logits then the loss, or "chunked" (the fused de-embedding and
        cross-entropy, no full fp32 logits; the same FLOPs)."""
        super().__init__()
        if loss_impl not in LOSS_IMPLS:
            raise ConfigError(f"loss_impl must be one of {', '.join(LOSS_IMPLS)}, got {loss_impl!r}")
        self.cfg = cfg
        self.backend = backend
        self.loss_impl = loss_impl
        self._core_fn = self._core  # torch.compile'd by compile_core()
        self.ops = get_backend(backend, kernel_options)
        self.wte = nn.Embedding(cfg.n_vocab, cfg.d_model)
        self._counts_cache: dict = {}

    def _final_norm(self) -> None:
        self.lnf_w, self.lnf_b = nn.Parameter(torch.ones(self.cfg.d_model)), nn.Parameter(torch.zeros(self.cfg.d_model))

    def compile_core(self, **options) -> None:
        """torch.compile the forward's arithmetic (and so its backward); the ledger's bookings
        stay outside the compiled region, precomputed per shape, so they are exact under compile.
        The backend's Triton and CUDA ops enter the graph as one custom op each."""
        self._core_fn = torch.compile(self._core, **options)

    # -- FLOP bookkeeping -------------------------------------------------------------------
    def _pass_counts(self, B: int, T: int, loss: bool) -> tuple:
        """One forward pass's bookings, every op times how often it runs (op_multiplicity),
        summed into one tuple per (B, T): booked once per pass, so the ledger's cost does not
        grow with depth (the launch-booked executed rows of ``Backend.books`` aside)."""
        key = (B, T, loss)
        if key not in self._counts_cache:
            total: dict = {}
            for op, k in fl.op_multiplicity(self.cfg).items():
                if op == "loss" and not loss:
                    continue
                for slot, f, b in self._counts(B, T)[op]:
                    cf, cb = total.get(slot, (0, 0))
                    total[slot] = (cf + k * f, cb + k * b)
            self._counts_cache[key] = tuple((s, f, b) for s, (f, b) in sorted(total.items()))
        return self._counts_cache[key]

    def _counts(self, B: int, T: int) -> dict:
        """Every op's compiled bookings for a (B, T) batch, built once per shape: the paper and
        model views, and the executed view of the ops whose launches do not book it themselves
        (``Backend.books``: those book it per launch, from the tiles that ran)."""
        if (B, T) not in self._counts_cache:
            counts = fl.op_counts(self.cfg, B, T, self.ops.executed, self.ops.books)
            self._counts_cache[(B, T)] = {op: fl.compile_counts(c) for op, c in counts.items()}
        return self._counts_cache[(B, T)]

    # -- forward ----------------------------------------------------------------------------
    def _core(self, idx: torch.Tensor, targets: torch.Tensor | None):
        """The arithmetic of a forward pass (what compile_core compiles): (logits or None, loss or None)."""
        raise NotImplementedError

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        if T > self.cfg.n_ctx:
            raise ConfigError(f"sequence length {T} exceeds n_ctx {self.cfg.n_ctx}")
        counts = self._pass_counts(B, T, targets is not None)  # the whole pass, every view
        logits, loss = self._core_fn(idx, targets)
        if targets is None:
            return fl.record_backward(fl.record(logits, counts)), None
        return logits, fl.record_backward(fl.record(loss, counts))

    def _head(self, h: torch.Tensor, targets: torch.Tensor | None):
        """The tied de-embedding and the loss of the final hidden states h (B, T, d)."""
        B, T, _ = h.shape
        c = self.cfg
        if targets is not None and self.loss_impl == "chunked":
            h2, w = _amp(h.reshape(B * T, c.d_model), self.wte.weight)  # the dtype F.linear would run in
            return None, linear_cross_entropy(h2, w, targets.reshape(-1))  # tied weights, no (B, T, V) logits
        logits = F.linear(h, self.wte.weight)  # (B, T, V), tied weights
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.float().view(-1, c.n_vocab), targets.reshape(-1))


class GPT(LanguageModel):
    def __init__(self, cfg: ModelConfig, backend: str = "torch", kernel_options: dict | None = None,
                 loss_impl: str = "full"):
        super().__init__(cfg, backend, kernel_options, loss_impl)
        self.wpe = nn.Embedding(cfg.n_ctx, cfg.d_model)
        # universal: one block whose weights every application shares
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(1 if cfg.arch == "universal" else cfg.n_layer))
        self._final_norm()
        self.reset_parameters()

    def reset_parameters(self):
        # GPT-2's init: N(0, 0.02), residual-stream writers scaled by 1/sqrt(2 n_layer) so the
        # stream's variance does not grow with depth; biases 0, LayerNorm gains 1.
        for name, p in self.named_parameters():
            if name.endswith("_w"):
                nn.init.ones_(p)
            elif name.endswith("bias") or name.endswith("_b"):
                nn.init.zeros_(p)
            else:
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("proj.weight", "fc_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters actually held.  non_embedding: matmul weights of the blocks only (the
        paper's N; biases and LayerNorm gains excluded, as in Table 1)."""
        if not non_embedding:
            return sum(p.numel() for p in self.parameters())
        return sum(m.weight.numel() for b in self.blocks for m in (b.qkv, b.proj, b.fc_in, b.fc_out))

    # -- forward ----------------------------------------------------------------------------
    def _norm(self, x, r, w, b):
        """LN(x) if there is no pending branch output r, else the fused (LN(x + r), x + r)."""
        if r is None:
            return self.ops.layer_norm(x, w, b, 1e-5), x
        return self.ops.add_layer_norm(x, r.to(x.dtype), w, b, 1e-5)  # the stream keeps its dtype under autocast

    def _core(self, idx: torch.Tensor, targets: torch.Tensor | None):
        B, T = idx.shape
        c = self.cfg
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, d)
        r = None  # the branch output still to be added to the residual stream
        for layer in range(c.n_layer):
            blk = self.blocks[layer % len(self.blocks)]  # universal: the one shared block, every time
            h, x = self._norm(x, r, blk.ln1_w, blk.ln1_b)
            qkv = F.linear(h, blk.qkv.weight, blk.qkv.bias)  # (B, T, 3 d_attn)
            q, k, v = _amp(qkv).view(B, T, 3, c.n_heads, c.d_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
            a = self.ops.attention(q, k, v, causal=True)  # (B, H, T, Dh)
            a = a.transpose(1, 2).reshape(B, T, c.d_attn)
            r = F.linear(a, blk.proj.weight, blk.proj.bias)
            h, x = self._norm(x, r, blk.ln2_w, blk.ln2_b)
            ffn_in = _amp(h, blk.fc_in.weight, blk.fc_in.bias, blk.fc_out.weight, blk.fc_out.bias)
            r = self.ops.feedforward(*ffn_in)
        h, _ = self._norm(x, r, self.lnf_w, self.lnf_b)
        return self._head(h, targets)


class LSTMLM(LanguageModel):
    """An LSTM language model (Kaplan et al. 2020, Figure 7): the token embedding (no positions:
    the recurrence knows the order), ``n_layer`` torch.nn.LSTM layers of width d_model, a final
    LayerNorm, and the tied de-embedding and loss every model shares.  The ledger's bookings come
    from ``op_counts`` (the ``lstm`` and ``lstm_gates`` rows).  The torch backend only: the
    recurrence is torch's own kernel (cuDNN on CUDA)."""

    def __init__(self, cfg: ModelConfig, backend: str = "torch", kernel_options: dict | None = None,
                 loss_impl: str = "full"):
        if backend != "torch":
            raise ConfigError(f"--arch lstm runs on --backend torch only (got {backend!r}): torch.nn.LSTM is its kernel")
        super().__init__(cfg, backend, kernel_options, loss_impl)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, num_layers=cfg.n_layer, batch_first=True)
        self._final_norm()
        self.reset_parameters()

    def reset_parameters(self):
        # torch's LSTM init (uniform +-1/sqrt(d)); the embedding N(0, 0.02) as the GPT's.
        self.lstm.reset_parameters()
        nn.init.normal_(self.wte.weight, 0.0, 0.02)
        nn.init.ones_(self.lnf_w)
        nn.init.zeros_(self.lnf_b)

    def num_params(self, non_embedding: bool = True) -> int:
        """non_embedding: the LSTM's weight matrices (biases excluded, as Table 1 excludes them)."""
        if not non_embedding:
            return sum(p.numel() for p in self.parameters())
        return sum(p.numel() for name, p in self.lstm.named_parameters() if name.startswith("weight_"))

    def _core(self, idx: torch.Tensor, targets: torch.Tensor | None):
        x = self.wte(idx)  # (B, T, d)
        h, _ = self.lstm(x)  # (B, T, d), zero initial state per sequence
        return self._head(self.ops.layer_norm(h, self.lnf_w, self.lnf_b, 1e-5), targets)


def make_model(cfg: ModelConfig, backend: str = "torch", kernel_options: dict | None = None,
               loss_impl: str = "full") -> LanguageModel:
    """The model ``cfg.arch`` names: GPT (gpt, universal) or LSTMLM (lstm)."""
    cls = LSTMLM if cfg.arch == "lstm" else GPT
    return cls(cfg, backend=backend, kernel_options=kernel_options, loss_impl=loss_impl)
