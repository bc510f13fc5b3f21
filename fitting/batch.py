"""Critical batch size (Kaplan et al. 2020, section 5.1), two ways.

    from flopscale.fitting.runs import load_runs
    from flopscale.fitting.batch import gns_points, se_points, bcrit_from_pairs
    runs = load_runs(["sweeps/batch"])
    gns_points(runs)                         # {"loss", "B"}: logged noise scale against train loss
    se_points(runs)["points"]                # {"loss", "B"}: B_crit(L) from steps/tokens to reach L
    bcrit_from_pairs(S=[2000, 1100], B=[2**15, 2**17])   # (S_min, E_min, B_crit)

1. Noise scale: B_crit ~ B_noise (the paper's approximation), logged per step by the trainer as
   `grad_noise_scale` (in tokens). We pair each estimate with the train loss at that step,
   smoothed (centred moving average), because B_crit is a function of the loss reached, not of the step.
   Where the curve bends (early steps) the average reads slightly high; on the synthetic runs of
   tests/test_fit_frontier.py this biases alpha_B by about +0.006 (3%).
2. Measured (S, E): runs of one model at two or more batch sizes B. For a target loss L each run
   gives S = steps to reach L and E = B*S tokens. The paper's trade-off
   (S/S_min - 1)(E/E_min - 1) = 1 is equivalent to S = S_min + E_min / B (substitute
   S/S_min - 1 = B_crit/B with B_crit = E_min/S_min), which is linear in (S_min, E_min): least
   squares in relative error, non-negative. Two batch sizes determine it; more over-determine it.
   Each target loss yields one (loss, B_crit) point; the `bcrit` law is then fitted to them.
"""

from __future__ import annotations

import json
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy.optimize import nnls

from .estimator import FitError
from .runs import Run, smooth


def _train_curve(run: Run):
    ok = np.isfinite(run.train_loss) & (run.step > 0)
    if ok.sum() < 2:
        return None
    return run.step[ok], smooth(run.train_loss[ok])


def gns_points(runs: Sequence[Run]) -> Dict[str, np.ndarray]:
    """(loss, B) with B = logged gradient noise scale (tokens), loss = smoothed train loss there."""
    loss, B = [], []
    for r in runs:
        cur = _train_curve(r)
        has = np.isfinite(r.gns) & (r.gns > 0)
        if cur is None or not has.any():
            continue
        S, L = cur
        for s, g in zip(r.step[has], r.gns[has]):
            if s < S[0]:
                continue
            loss.append(float(np.interp(s, S, L)))
            B.append(float(g))
    return {"loss": np.array(loss), "B": np.array(B)}


def bcrit_from_pairs(S, B) -> Tuple[float, float, float]:
    """(S_min, E_min, B_crit) from steps S to reach one loss at batch sizes B (tokens).

    Fits S_i = S_min + E_min / B_i, rows divided by S_i so every run counts in relative error.
    """
    S = np.asarray(S, float)
    B = np.asarray(B, float)
    if S.size < 2 or np.unique(B).size < 2:
        raise FitError("B_crit from (S, E) needs runs at two or more batch sizes")
    A = np.stack([np.ones_like(S), 1.0 / B], axis=1) / S[:, None]
    (s_min, e_min), _ = nnls(A, np.ones_like(S))
    if s_min <= 0 or e_min <= 0:
        return float(s_min), float(e_min), float("nan")
    return float(s_min), float(e_min), float(e_min / s_min)


def steps_to_loss(step: np.ndarray, loss: np.ndarray, target: float) -> float:
    """First step at which the (running-minimum) loss reaches target, interpolated in log step."""
    m = np.minimum.accumulate(loss)
    hit = np.flatnonzero(m <= target)
    if not hit.size:
        return float("nan")
    j = hit[0]
    if j == 0:
        return float(step[0])
    # m[j-1] > target >= m[j]: interpolate log(step) linearly in loss
    t = (m[j - 1] - target) / (m[j - 1] - m[j])
    return float(np.exp(np.log(step[j - 1]) + t * (np.log(step[j]) - np.log(step[j - 1]))))


def _group_key(r: Run) -> str:
    # same model and same data budget; batch size (and the lr tuned to it) may differ
    return json.dumps({"model": r.config.get("model", {}), "N": r.N, "data": r.n_train_tokens}, sort_keys=True)


def se_points(runs: Sequence[Run], n_targets: int = 8) -> Dict:
    """B_crit(L) points from groups of runs differing only in batch size."""
    groups: Dict[str, List[Run]] = {}
    for r in runs:
        groups.setdefault(_group_key(r), []).append(r)
    loss, Bc, detail = [], [], []
    for key, rs in groups.items():
        curves = [(r, _train_curve(r)) for r in rs]
        curves = [(r, c) for r, c in curves if c is not None]
        if len({round(r.batch_tokens) for r, _ in curves}) < 2:
            continue
        # targets every run reaches, from early (after the steepest transient) to the worst final loss
        worst_final = max(float(np.min(c[1])) for _, c in curves)
        early = min(float(c[1][min(len(c[1]) - 1, max(1, len(c[1]) // 10))]) for _, c in curves)
        if not early > worst_final:
            continue
        targets = np.exp(np.linspace(np.log(early), np.log(worst_final), n_targets + 1)[1:])
        for L in targets:
            S = np.array([steps_to_loss(c[0], c[1], L) for _, c in curves])
            B = np.array([r.batch_tokens for r, _ in curves])
            ok = np.isfinite(S)
            if np.unique(B[ok]).size < 2:
                continue
            s_min, e_min, bc = bcrit_from_pairs(S[ok], B[ok])
            if not np.isfinite(bc):
                continue
            loss.append(float(L))
            Bc.append(bc)
            detail.append({"loss": float(L), "S_min": s_min, "E_min": e_min, "B_crit": bc,
                           "runs": [r.name for (r, _), k in zip(curves, ok) if k]})
    return {"points": {"loss": np.array(loss), "B": np.array(Bc)}, "detail": detail}
