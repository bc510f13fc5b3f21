"""The learning-rate schedules, one formula each, shared by the trainer (engine/train.py), the
presets that compare schedules at equal area (engine/presets.py) and the sweep's report: pure
Python over a TrainConfig, so expanding a grid needs neither torch nor the trainer.

    from flopscale.engine.schedule import lr_at
    [lr_at(t, TrainConfig(lr=3e-3, steps=100, warmup=10)) for t in range(100)]
"""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_at(step: int, tc: TrainConfig) -> float:
    """The learning rate of step ``step`` (0-based): linear warmup over ``warmup`` steps, then

    * cosine: cosine decay to lr * min_lr_frac at ``steps`` (Kaplan et al. 2020);
    * wsd: constant lr, then a linear decay to lr * min_lr_frac over the last
      ``decay_frac * steps`` steps (warmup-stable-decay, Hägele et al. 2024).  Two wsd runs that
      differ only in ``steps`` agree on every step before the shorter one's decay starts, which
      is what makes a cooldown branch (``init_from``) the same run as a standalone one.
    * linear: linear decay to lr * min_lr_frac at ``steps`` (the cosine's endpoints, a straight line);
    * constant: lr to the end (no decay, no floor).

    Every schedule is ``lr`` times a shape that does not depend on ``lr``, so the area under the
    curve (the sum over steps) scales with ``lr``: presets with ``area_of`` (engine/presets.py)
    rely on that to compare schedules at equal area (Kaplan et al. Figure 21).
    """
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    if tc.schedule == "constant":
        return tc.lr
    if tc.schedule == "wsd":
        decay_start = decay_start_step(tc)
        if step < decay_start:
            return tc.lr
        frac = (step + 1 - decay_start) / max(1, tc.steps - decay_start)
        return tc.lr * (1 - (1 - tc.min_lr_frac) * min(frac, 1.0))
    frac = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    if tc.schedule == "linear":
        return tc.lr * (tc.min_lr_frac + (1 - tc.min_lr_frac) * (1 - min(frac, 1.0)))
    return tc.lr * (tc.min_lr_frac + (1 - tc.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def decay_start_step(tc: TrainConfig) -> int:
    """wsd: the first step of the final decay, (1 - decay_frac) * steps rounded, after warmup."""
    return max(tc.warmup, round((1 - tc.decay_frac) * tc.steps))
