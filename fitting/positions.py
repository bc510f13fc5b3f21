"""Loss per token position: the power law in the context position (Kaplan et al. 2020, Figure 20).

    from flopscale.fitting.positions import position_fits, fit_position_law
    fits = position_fits(["runs/gpt", "runs/lstm"])   # one entry per run with a positions.jsonl
    fit_position_law(losses)                          # {"L_inf", "t_c", "alpha_t"}, rmse

Kaplan et al. (Figure 20, left; Appendix D) show the loss of the token at position t of the
context falling as a power law in t with a constant floor.  The form fitted here is

    L(t) = L_inf + (t_c / t)^alpha_t,      t = 1 .. n_ctx (t = 1: the token after one of context),

by least squares on the losses, with L_inf in [0, min L] and alpha_t > 0.  Each run's last row of
RUN_DIR/positions.jsonl (``flopscale train --eval-positions``) is fitted; an LSTM's curve
flattens early (its plateau, Figure 7 right), a Transformer's keeps falling.
"""

from __future__ import annotations

import json
import math
import os
from typing import List, Optional

import numpy as np
from scipy.optimize import least_squares

from .laws import POSITION_FORMULA

POSITIONS = "positions.jsonl"


def fit_position_law(losses) -> dict:
    """Fit POSITION_FORMULA (fitting/laws.py) to losses[t-1], t = 1..len(losses): {"params", "rmse", "n_points"}."""

    y = np.asarray(losses, dtype=float)
    if y.size < 4 or not np.all(np.isfinite(y)):
        raise ValueError(f"need at least 4 finite per-position losses, got {y.size}")
    t = np.arange(1, y.size + 1, dtype=float)
    lo = float(y.min())
    # parameters (L_inf, ln t_c, alpha_t): positivity of t_c by construction
    def resid(p):
        return p[0] + np.exp(p[2] * (p[1] - np.log(t))) - y

    best = None
    for a0 in (0.2, 0.5, 1.0, 2.0):
        L0 = 0.9 * lo
        lt0 = math.log(max(y[0] - L0, 1e-6)) / a0
        r = least_squares(resid, [L0, lt0, a0], bounds=([0.0, -50.0, 1e-3], [lo, 50.0, 10.0]))
        if best is None or r.cost < best.cost:
            best = r
    L_inf, ln_tc, alpha = (float(v) for v in best.x)
    return {"params": {"L_inf": L_inf, "t_c": math.exp(ln_tc), "alpha_t": alpha},
            "rmse": float(np.sqrt(np.mean(best.fun ** 2))), "n_points": int(y.size)}


def _last_row(path: str) -> Optional[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a torn last line
    return rows[-1] if rows else None


def position_fits(run_dirs: List[str]) -> List[dict]:
    """One fit per run directory holding positions.jsonl (its last eval): {"run", "arch", "N",
    "step", "formula", "params", "rmse", "n_points", "losses"}; runs without it are left out."""
    out = []
    for d in run_dirs:
        p = os.path.join(d, POSITIONS)
        if not os.path.exists(p):
            continue
        row = _last_row(p)
        if row is None:
            continue
        cfg = {}
        try:
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            pass
        losses = row["val_loss_by_position"]
        entry = {"run": d, "arch": cfg.get("model", {}).get("arch", "gpt"), "N": cfg.get("N"), "step": row["step"],
                 "formula": POSITION_FORMULA, "losses": losses}
        try:
            entry.update(fit_position_law(losses))
        except ValueError as e:
            entry["note"] = str(e)
        out.append(entry)
    return out
