"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, appendix A.1).

    from flopscale.engine.noise import NoiseScaleEstimator
    est = NoiseScaleEstimator(ema=0.95)
    est.update(sq_small=|g_small|^2, b_small=4, sq_big=|g_big|^2, b_big=16)   # once per step
    est.b_simple          # in the unit of b_small / b_big (sequences here), None until |G|^2 > 0

Two gradients of the same step at two batch sizes come for free in training: a micro-batch's (or
one rank's) gradient G_small over B_small examples and the accumulated (or all-reduced) gradient
G_big over B_big examples.  With E|G_B|^2 = |G|^2 + tr(Sigma)/B, the two unbiased estimates are

    |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

Each is noisy (|G|^2 often comes out negative on one step), and the ratio of two unbiased
estimates is biased, so the two are smoothed *separately* by an exponential moving average and
divided afterwards (docs/ARCHITECTURE.md, "Fitting notes").  The EMA's start-up bias (Adam's 1 - beta^t)
cancels in the ratio; it is corrected anyway so ``g2`` and ``trace`` read as estimates.

Units: B_simple comes out in the unit the batch sizes are given in.  The trainer passes
sequences and multiplies by n_ctx, so ``grad_noise_scale`` in metrics.jsonl is in **tokens**,
the unit of the paper's B_crit.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch


def unbiased_estimates(sq_small: float, b_small: float, sq_big: float, b_big: float) -> tuple:
    """(|G|^2, tr(Sigma)) from one pair of squared gradient norms at batch sizes b_small < b_big."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


def sq_norm_tensor(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of squares over a list of tensors, accumulated in float64, as a 0-dim tensor on their
    device (no host sync: the trainer reads it with the step's other numbers)."""
    ts = [t for t in tensors if t is not None]
    if not ts:
        return torch.zeros((), dtype=torch.float64)
    norms = torch._foreach_norm(ts, 2)
    return torch.stack([n.double() for n in norms]).pow(2).sum()


def sq_norm(tensors: Iterable[torch.Tensor]) -> float:
    """sq_norm_tensor as a Python float (one host sync)."""
    return float(sq_norm_tensor(tensors))


class NoiseScaleEstimator:
    """EMA-smoothed |G|^2 and tr(Sigma), and their ratio B_simple."""

    def __init__(self, ema: float = 0.95):
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1), got {ema}")
        self.ema = ema
        self.n = 0            # updates so far
        self._g2 = 0.0        # EMA of the |G|^2 estimates (uncorrected)
        self._trace = 0.0     # EMA of the tr(Sigma) estimates (uncorrected)

    def update(self, sq_small: float, b_small: float, sq_big: float, b_big: float) -> None:
        g2, trace = unbiased_estimates(sq_small, b_small, sq_big, b_big)
        self._g2 = self.ema * self._g2 + (1 - self.ema) * g2
        self._trace = self.ema * self._trace + (1 - self.ema) * trace
        self.n += 1

    @property
    def g2(self) -> Optional[float]:
        return self._g2 / (1 - self.ema ** self.n) if self.n else None

    @property
    def trace(self) -> Optional[float]:
        return self._trace / (1 - self.ema ** self.n) if self.n else None

    @property
    def b_simple(self) -> Optional[float]:
        """tr(Sigma) / |G|^2 in the unit of the batch sizes; None while |G|^2 <= 0 (noise-dominated)."""
        if not self.n or self._g2 <= 0 or self._trace <= 0:
            return None
        return self._trace / self._g2

    def state_dict(self) -> dict:
        return {"ema": self.ema, "n": self.n, "g2": self._g2, "trace": self._trace}

    def load_state_dict(self, s: dict) -> None:
        self.ema, self.n, self._g2, self._trace = float(s["ema"]), int(s["n"]), float(s["g2"]), float(s["trace"])


class MicroBatchNorms:
    """|g_micro|^2 of each micro-batch of a gradient-accumulation step, read off the growth of
    the accumulated ``.grad`` (which holds sum_i g_i / A after micro-batch i when each micro
    loss is divided by A).  One gradient-sized copy; O(params) work per micro-batch.

        norms = MicroBatchNorms(params, A)
        for i in range(A):
            (loss_i / A).backward(); norms.after_backward()
        norms.mean_sq       # mean over micro-batches of |g_i|^2: an unbiased E|G_{B_small}|^2
    """

    def __init__(self, params, accum: int):
        self.params, self.A = [p for p in params if p.requires_grad], accum
        self._prev, self._sum, self._n = None, 0.0, 0

    def after_backward(self) -> None:
        grads = [p.grad for p in self.params]
        if self._prev is None:
            self._sum = self._sum + sq_norm_tensor(grads) * self.A * self.A
            if self.A > 1:
                self._prev = [g.detach().clone() for g in grads]
        else:
            self._sum = self._sum + sq_norm_tensor(torch._foreach_sub(grads, self._prev)) * self.A * self.A
            if self._n + 1 < self.A:
                torch._foreach_copy_(self._prev, grads)
        self._n += 1

    @property
    def mean_sq_tensor(self) -> torch.Tensor:
        """The mean as a 0-dim float64 tensor on the gradients' device: the sums stay there, so
        a step of A micro-batches syncs once, not A times (the same float64 arithmetic a Python
        float would do, so the number is the same to the bit)."""
        return torch.as_tensor(self._sum, dtype=torch.float64) / max(self._n, 1)

    @property
    def mean_sq(self) -> float:
        return float(self.mean_sq_tensor)
