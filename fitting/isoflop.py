"""Hoffmann et al. 2022's approach 2 (isoFLOP slices), robust to what real sweeps contain.

    from flopscale.fitting.isoflop import fit_isoflop
    res = fit_isoflop({"N": N, "C": C, "loss": loss})          # D optional
    res["params"]["a"], res["ci95"]["a"], res["slices"][0]       # N_opt ~ C^a, per-budget minima

`flopscale fit --csv points.csv --law isoflop` and `flopscale fit SWEEP --law isoflop` call it.

The procedure, and why each step:

1. Slices. Points are sorted by log10 C and a gap wider than `tol_dex` starts a new slice
   (single linkage): runs planned at one budget land a few percent apart (whole steps, whole
   sequences), so exact equality would split every slice. The slice's C is the geometric mean.
2. Unequal budgets inside a slice. A run with 5% more compute than its slice reads lower by
   about dL/dlnC * 0.05, which near the minimum is as large as the curvature being fitted. By the
   envelope theorem the slope of L at fixed N equals dL*/dlnC, the slope of the slices' minimum
   loss, at the optimum; so a first pass finds the minima, fits L* against ln C across slices, and
   a second pass moves each point to its slice's C by that slope before refitting. Exact at the
   optimum, and the window (3) keeps only points near it.
3. Each slice's minimum: a parabola in ln N through the points of a window of +-`window_dex`
   decades around the current minimum, re-centred on the parabola's vertex until the window stops
   changing. Why a window and not every point (Hoffmann's parabola per slice): at fixed C the
   Chinchilla form is L(x) = E + A e^(-alpha x) + B' e^(beta x) in x = ln N, not a parabola; models
   10x too small or large sit on its exponential walls, several nats up, and pull a global
   parabola's vertex by an amount that depends on how each budget happened to be sampled, hence
   a wrong exponent. Inside a window symmetric in ln N around the minimum the leftover cubic
   term shifts the vertex by -(beta - alpha) w^2 / 10 (w the half-width in ln N, uniform sampling),
   the same at every budget because L'''/L'' at the minimum is (beta - alpha)/3 whatever C is: it
   moves the coefficient k_N slightly, never the exponent. The window must hold 3 sizes with at
   least one on each side of the vertex; it is never widened to reach a far point, since a
   minimum bracketed only by a model 30x away is located by that model's wall, not by the data
   near it.
   A slice is dropped, with the reason in its "note", when it has fewer than 3 sizes, when its
   lowest loss is at its smallest or largest size (the minimum is not interior: the slice cannot
   locate it, only bound it), when the parabola is not convex, or when the vertex leaves the window.
4. Across slices: ln N_opt = ln k_N + a ln C and ln D_opt = ln k_D + b ln C by Huber regression
   (delta = 1.345 x the MAD scale of the residuals: 95% efficient for normal errors, yet one slice
   with a misplaced minimum cannot swing the line), each slice weighted by the inverse variance
   of its vertex (delta method on its parabola; the loss noise, common to all slices, cancels),
   capped at 25:1. D_opt per slice is K/N_opt with K the slice's geometric-mean D*N*C_s/C_i (the
   table's own compute convention) when D is given, else C/(6 N_opt). D_opt/N_opt is the
   tokens-per-parameter ratio at that budget.

   Why, measured (60 synthetic tables of Chinchilla's L at 9 budgets 6e18..3e21, 6-12 sizes per
   budget off-centre by up to 0.35 dex and 0.4-1.0 dex to each side, 1-3 points 100-1000x off,
   budgets +-5%, 0.4% noise; error of a, rms/max): the unweighted window 0.020/0.053; a band in
   loss above the slice minimum instead of the window, Delta = 0.05/0.1/0.2/0.3/0.5 nats,
   0.040/0.036/0.033/0.022/0.021 (a narrow band keeps too few points, a wide one is the window
   again); a cubic in the band, 0.029-0.030 (the extra coefficient costs more variance than the
   asymmetry, (beta - alpha) = -0.06 per nat, costs bias: noise-free the window's error is
   0.0033 rms); the exact isoFLOP shape E + A'e^(-alpha x) + B'e^(beta x) with free exponents
   per slice 0.039, with exponents shared across slices 0.012 (that is approach 3 in disguise);
   the same shape with the true exponents, a bound no model-free estimator reaches, 0.0077. So
   the window's scatter is noise on the few points that bracket each minimum, not bias; what
   helps is not trusting every slice alike: a slice sampled on one side, or narrowly, or on a
   flat profile (large C) locates its minimum worse, and its vertex variance says by how much.
   Weighted: 0.015/0.038 on the same tables; 0.009/0.020 with 8-14 sizes over 0.6-1.1 dex a side
   at 0.3% noise (tests/test_fit_isoflop.py). Hoffmann's parabola through every point: 0.043/0.084.
5. Intervals: the bootstrap resamples points within every slice, re-finds each minimum (window,
   iterations and drops included) and refits the lines; 2.5/97.5 percentiles.

A fit needs more usable slices than free parameters in each line (3 for a free exponent and
coefficient); otherwise FitError. `fix` holds any of a, k_N, b, k_D.
"""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np

from .estimator import FitError, as_columns, bootstrap_intervals, parse_fix, positive_columns

PARAMS = ("a", "k_N", "b", "k_D")
FORMULA = "N_opt = k_N C^a, D_opt = k_D C^b (minima of isoFLOP slices)"
TOL_DEX = 0.1
WINDOW_DEX = 1.0
WEIGHT_RATIO = 25.0  # largest / smallest slice weight in the across-slice line
LN10 = math.log(10.0)


# ------------------------------------------------------------------------------------------------
# Input
# ------------------------------------------------------------------------------------------------

def check_isoflop_points(cols: Dict[str, object]) -> Dict[str, np.ndarray]:
    cols = as_columns(cols)
    need = ["N", "C", "loss"] + (["D"] if "D" in cols else [])
    missing = [k for k in ("N", "C", "loss") if k not in cols]
    if missing:
        raise FitError(f"law 'isoflop' needs column(s) N, C, loss (D optional); missing {', '.join(missing)}")
    return positive_columns(cols, need)


def group_slices(C: np.ndarray, tol_dex: float = TOL_DEX) -> List[np.ndarray]:
    """Indices of each slice: sorted log10 C, a gap > tol_dex starts a new one (single linkage)."""
    lc = np.log10(C)
    order = np.argsort(lc, kind="stable")
    groups, cur = [], [order[0]]
    for i, j in zip(order[:-1], order[1:]):
        if lc[j] - lc[i] <= tol_dex:
            cur.append(j)
        else:
            groups.append(np.array(cur))
            cur = [j]
    groups.append(np.array(cur))
    return groups


# ------------------------------------------------------------------------------------------------
# One slice
# ------------------------------------------------------------------------------------------------

def _parabola(x, y):
    """Least squares y = p2 x^2 + p1 x + p0 (x already centred, so the normal equations are tame);
    also the residual sum of squares and (X^T X)^-1, for the vertex's variance."""
    X = np.stack([x * x, x, np.ones_like(x)], axis=1)
    p, *_ = np.linalg.lstsq(X, y, rcond=None)
    r = y - X @ p
    try:
        cov = np.linalg.inv(X.T @ X)
    except np.linalg.LinAlgError:
        cov = np.full((3, 3), np.inf)
    return p, float(r @ r), cov


def slice_minimum(lnN: np.ndarray, loss: np.ndarray, window_dex: float = WINDOW_DEX,
                  method: str = "window", max_iter: int = 25) -> Dict:
    """Minimum of loss over ln N in one slice: {"lnN_opt", "loss_opt", "centre", "coef", "used",
    "window_dex", "var_unit", "rss", "dof"} or {"note"}. var_unit * sigma^2 is the vertex's
    variance (delta method on the parabola, sigma the loss noise); the across-slice line weights
    each slice by it. method "all" is Hoffmann's parabola through every point (kept to show what
    the window buys; never the default)."""
    sizes = np.unique(lnN)
    if sizes.size < 3:
        return {"note": f"{sizes.size} model size(s); a minimum needs at least 3"}
    mean_by_size = np.array([loss[lnN == s].mean() for s in sizes])
    k0 = int(np.argmin(mean_by_size))
    if k0 == 0 or k0 == sizes.size - 1:
        edge = "smallest" if k0 == 0 else "largest"
        return {"note": f"lowest loss at the {edge} sampled size (N = {math.exp(sizes[k0]):.3g}): the minimum is "
                        f"not interior; add {'smaller' if k0 == 0 else 'larger'} models at this budget"}
    if method == "all":
        c = float(np.mean(lnN))
        (p2, p1, p0), rss, cov = _parabola(lnN - c, loss)
        used = np.ones(lnN.size, bool)
        w_used = float((lnN.max() - lnN.min()) / 2 / LN10)
    else:
        c = float(sizes[k0])
        w = window_dex * LN10
        prev = None
        for _ in range(max_iter):
            inside = sizes[np.abs(sizes - c) <= w * (1 + 1e-12)]
            if not ((inside < c - 1e-12).any() and (inside > c + 1e-12).any()):
                side = "smaller" if not (inside < c - 1e-12).any() else "larger"
                return {"note": f"no {side} size within +-{window_dex:g} dex of the minimum (N ~ {math.exp(c):.3g}): "
                                f"not bracketed, the minimum is not interior"}
            if inside.size < 3:
                return {"note": f"{inside.size} sizes within +-{window_dex:g} dex of the minimum; a parabola needs 3"}
            used = np.abs(lnN - c) <= w * (1 + 1e-12)
            (p2, p1, p0), rss, cov = _parabola(lnN[used] - c, loss[used])
            key = used.tobytes()
            if not p2 > 0 or key == prev:
                break  # not convex, or the window holds the same points as last time: converged
            prev = key
            c_next = c - p1 / (2 * p2)
            if abs(c_next - c) < 1e-12:
                break
            c = c_next
        w_used = float(window_dex)
    if not p2 > 0:
        return {"note": "loss is not convex in log N over the window: no minimum; add sizes around the optimum"}
    v = c - p1 / (2 * p2)
    lo, hi = lnN[used].min(), lnN[used].max()
    if not lo <= v <= hi:
        return {"note": f"the parabola's minimum (N = {math.exp(v):.3g}) lies outside the sizes it was fitted to: "
                        f"not interior"}
    loss_opt = p0 + p1 * (v - c) + p2 * (v - c) ** 2
    g = np.array([p1 / (2 * p2 ** 2), -1.0 / (2 * p2), 0.0])  # d vertex / d (p2, p1, p0)
    return {"lnN_opt": float(v), "loss_opt": float(loss_opt), "centre": float(c),
            "coef": [float(p2), float(p1), float(p0)], "used": used, "window_dex": w_used,
            "var_unit": float(g @ cov @ g), "rss": rss, "dof": int(used.sum()) - 3}


# ------------------------------------------------------------------------------------------------
# Across slices
# ------------------------------------------------------------------------------------------------

def _huber_line(lx, ly, slope=None, icpt=None, iters: int = 200, weights=None):
    """ln y = icpt + slope ln x by Huber IRLS, delta = 1.345 x MAD scale of the standardised
    residuals r sqrt(weight); either may be held. weights: inverse variances (relative)."""
    if slope is not None and icpt is not None:
        return float(icpt), float(slope)
    pw = np.ones_like(ly) if weights is None else np.asarray(weights, float) / np.max(weights)
    sq = np.sqrt(pw)
    cx = float(np.sum(pw * lx) / np.sum(pw))
    if slope is None and icpt is None:
        X = np.stack([np.ones_like(lx), lx - cx], axis=1)
        yy = ly
    elif slope is not None:
        X = np.ones((lx.size, 1))
        yy = ly - slope * lx
    else:
        X = (lx - 0.0)[:, None]
        yy = ly - icpt
    th = np.linalg.lstsq(X * sq[:, None], yy * sq, rcond=None)[0]
    r = (yy - X @ th) * sq
    scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    delta = max(1.345 * scale, 1e-3 * float(np.sqrt(np.mean(pw))))
    for _ in range(iters):
        w = pw * np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
        Xw = X * w[:, None]
        new = np.linalg.solve(X.T @ Xw, Xw.T @ yy)
        done = np.max(np.abs(new - th)) < 1e-12
        th = new
        r = (yy - X @ th) * sq
        if done:
            break
    if slope is None and icpt is None:
        return float(th[0] - th[1] * cx), float(th[1])
    if slope is not None:
        return float(th[0]), float(slope)
    return float(icpt), float(th[0])


def _minima(cols, groups, tol_dex, window_dex, method, slope, idx_per_slice=None, a_shift=0.0):
    """Per-slice minima; a point at C_i moves to its slice's C_s along the optimum's path:
    ln N -= a_shift ln(C_i/C_s) (same size relative to N_opt), loss -= slope ln(C_i/C_s)."""
    out = []
    for s, g in enumerate(groups):
        if idx_per_slice is not None:
            g = g[idx_per_slice[s]]
        C = cols["C"][g]
        Cs = float(np.exp(np.mean(np.log(C))))
        lnN = np.log(cols["N"][g]) - a_shift * np.log(C / Cs)
        loss = cols["loss"][g] - slope * np.log(C / Cs)
        m = slice_minimum(lnN, loss, window_dex, method)
        m.update(C=Cs, n_points=int(g.size), idx=g)
        if "lnN_opt" in m:
            N_opt = math.exp(m["lnN_opt"])
            if "D" in cols:
                K = float(np.exp(np.mean(np.log(cols["D"][g] * cols["N"][g] * Cs / C))))
                m["D_opt"], m["D_rule"] = K / N_opt, "slice D*N"
            else:
                m["D_opt"], m["D_rule"] = Cs / (6.0 * N_opt), "C/(6 N)"
            m["N_opt"] = N_opt
        out.append(m)
    return out


def slice_weights(good) -> np.ndarray:
    """Relative inverse variance of each slice's ln N_opt: 1/var_unit (its sampling design and
    curvature). The loss noise is taken common to every slice, so it cancels (a slice has too few
    points to estimate its own). Capped at WEIGHT_RATIO between the best- and worst-located slices, so that one slice
    whose parabola came out too steep by chance cannot carry the line."""
    vu = np.array([m.get("var_unit", 1.0) for m in good], float)
    vu = np.where(np.isfinite(vu) & (vu > 0), vu, np.inf)
    if not np.isfinite(vu).any():
        return np.ones(len(good))
    w = 1.0 / vu
    return np.maximum(w, w.max() / WEIGHT_RATIO)


def _lines(minima, fixed, weighted=True):
    good = [m for m in minima if "N_opt" in m]
    lc = np.log([m["C"] for m in good])
    w = slice_weights(good) if weighted else None
    iN, a = _huber_line(lc, np.log([m["N_opt"] for m in good]), fixed.get("a"),
                        math.log(fixed["k_N"]) if "k_N" in fixed else None, weights=w)
    iD, b = _huber_line(lc, np.log([m["D_opt"] for m in good]), fixed.get("b"),
                        math.log(fixed["k_D"]) if "k_D" in fixed else None, weights=w)
    return {"a": a, "k_N": math.exp(iN), "b": b, "k_D": math.exp(iD)}, lc, good


def fit_isoflop(cols: Dict[str, object], *, tol_dex: float = TOL_DEX, window_dex: float = WINDOW_DEX,
                n_boot: int = 200, seed: int = 0, fix=None, method: str = "window",
                correct_budgets: bool = True, return_boot: bool = False):
    """Approach 2 on points {N, C, loss[, D]}; see the module docstring. Returns the fits.json entry."""
    fixed = _check_isoflop_request(fix, tol_dex, window_dex)
    data = check_isoflop_points(cols)
    groups = group_slices(data["C"], tol_dex)

    minima, spread, slope, a_shift, correction = _corrected_minima(data, groups, tol_dex, window_dex, method,
                                                                   correct_budgets)

    n_free_N = 2 - sum(k in fixed for k in ("a", "k_N"))
    n_free_D = 2 - sum(k in fixed for k in ("b", "k_D"))
    good = [m for m in minima if "N_opt" in m]
    need = max(n_free_N, n_free_D) + 1
    if len(good) < need:
        dropped = [m for m in minima if "N_opt" not in m]
        why = f"; dropped: {dropped[0]['note']}" + (f" (and {len(dropped) - 1} more)" if len(dropped) > 1 else "") \
            if dropped else ""
        raise FitError(f"law 'isoflop': {len(good)} usable slice(s) of {len(minima)} (tolerance {tol_dex:g} dex); "
                       f"N_opt(C) has {max(n_free_N, n_free_D)} free parameter(s) and needs at least {need}{why}")
    weighted = method == "window"  # "all" stays Hoffmann's procedure: plain line through the minima
    params, lc, good = _lines(minima, fixed, weighted)
    rN = np.log([m["N_opt"] for m in good]) - (math.log(params["k_N"]) + params["a"] * lc)

    boot = _isoflop_bootstrap(data, groups, minima, fixed, tol_dex, window_dex, method, slope, a_shift, need,
                              weighted, n_boot, seed)
    ci95, boot_warnings = bootstrap_intervals(PARAMS, boot, fixed, n_boot)

    slices = _slice_entries(minima, spread)
    warnings = _isoflop_warnings(lc, good, minima) + boot_warnings
    out = {
        "law": "isoflop",
        "params": params,
        "ci95": ci95,
        "n_points": int(data["N"].size),
        "loss_fn": (f"per slice: parabola in ln N over a +-{window_dex:g} dex window around the minimum"
                    if method == "window" else "per slice: parabola in ln N through every point (Hoffmann)")
                   + "; across slices: Huber (delta 1.345 MAD) on ln N_opt, ln D_opt",
        "rmse_log": float(np.sqrt(np.mean(rN ** 2))),
        "formula": FORMULA,
        "n_slices_used": len(good),
        "tol_dex": tol_dex,
        "window_dex": window_dex,
        "method": method,
        "budget_correction": correction,
        "slices": slices,
        "n_boot": int(n_boot),
        "seed": int(seed),
        "ranges": {k: [float(v.min()), float(v.max())] for k, v in data.items()},
        "fixed": {k: float(v) for k, v in fixed.items()},
        "warnings": warnings,
    }
    if return_boot:
        return out, boot
    return out


def _check_isoflop_request(fix, tol_dex, window_dex) -> Dict[str, float]:
    """The --fix values of an isoflop fit, checked; FitError (one line) otherwise."""
    fixed = parse_fix(fix)
    for k in fixed:
        if k not in PARAMS:
            raise FitError(f"--fix {k}: not a parameter of law 'isoflop' (its parameters: {', '.join(PARAMS)})")
        if k.startswith("k_") and not fixed[k] > 0:
            raise FitError(f"--fix {k}: must be positive, got {fixed[k]:g}")
    if len(fixed) == len(PARAMS):
        raise FitError("--fix holds every parameter of law 'isoflop'; nothing is left to fit")
    if not tol_dex > 0 or not window_dex > 0:
        raise FitError(f"isoflop: slice tolerance and window must be positive (got {tol_dex:g}, {window_dex:g})")
    return fixed


def _corrected_minima(data, groups, tol_dex, window_dex, method, correct_budgets):
    """Each slice's minimum, with the budgets' jitter corrected (two passes) where the slices' C
    spread; returns (minima, spread per slice in dex, dL/dlnC, dlnN_opt/dlnC, the correction record)."""
    slope = 0.0
    minima = _minima(data, groups, tol_dex, window_dex, method, 0.0)
    spread = [float(np.ptp(np.log10(data["C"][g]))) for g in groups]
    good = [m for m in minima if "N_opt" in m]
    correction = {"applied": False, "dL_dlnC": 0.0, "dlnN_opt_dlnC": 0.0}
    a_shift = 0.0
    if correct_budgets and len(good) >= 2 and max(spread) > 1e-4:
        for _ in range(2):  # the second pass re-estimates both slopes from corrected minima
            good = [m for m in minima if "N_opt" in m]
            if len(good) < 2:
                break
            lc = np.log([m["C"] for m in good])
            slope = float(np.polyfit(lc, [m["loss_opt"] for m in good], 1)[0])
            a_shift = float(np.polyfit(lc, np.log([m["N_opt"] for m in good]), 1)[0])
            minima = _minima(data, groups, tol_dex, window_dex, method, slope, a_shift=a_shift)
        correction = {"applied": True, "dL_dlnC": slope, "dlnN_opt_dlnC": a_shift}
    return minima, spread, slope, a_shift, correction


def _isoflop_bootstrap(data, groups, minima, fixed, tol_dex, window_dex, method, slope, a_shift, need, weighted,
                       n_boot, seed) -> np.ndarray:
    """(n_boot, len(PARAMS)) refits with the points resampled within each slice (NaN where too few)."""
    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, len(PARAMS)), np.nan)
    keep = [i for i, m in enumerate(minima) if "N_opt" in m]
    for r in range(n_boot):
        idx = [rng.integers(0, g.size, g.size) for g in groups]
        sub = [groups[i] for i in keep]
        mins = _minima(data, sub, tol_dex, window_dex, method, slope, [idx[i] for i in keep], a_shift)
        if sum("N_opt" in m for m in mins) < need:
            continue
        p, _, _ = _lines(mins, fixed, weighted)
        boot[r] = [p[k] for k in PARAMS]
    return boot


def _slice_entries(minima, spread) -> List[dict]:
    """fits.json's "slices": each slice's minimum and parabola, or why it was dropped."""
    slices = []
    for m, sp in zip(minima, spread):
        e = {"C": m["C"], "n_points": m["n_points"], "C_spread_dex": sp}
        if "N_opt" in m:
            e.update(N_opt=m["N_opt"], loss_opt=m["loss_opt"], D_opt=m["D_opt"],
                     tokens_per_param=m["D_opt"] / m["N_opt"], D_rule=m["D_rule"], n_used=int(m["used"].sum()),
                     window_dex=m["window_dex"], parabola={"centre_lnN": m["centre"], "coef": m["coef"]},
                     used=[int(i) for i in m["idx"][m["used"]]])
        else:
            e["note"] = m["note"]
        e["rows"] = [int(i) for i in m["idx"]]
        slices.append(e)
    return slices


def _isoflop_warnings(lc, good, minima) -> List[str]:
    warnings = []
    span = float(np.ptp(lc) / LN10)
    if span < 1.0:
        warnings.append(f"the usable slices span {span:.2f} decade(s) of C; the exponent rests on a short lever arm")
    if len(good) < 5:
        warnings.append(f"{len(good)} usable slices: read the 95% intervals rather than the point values")
    n_drop = len(minima) - len(good)
    if n_drop:
        warnings.append(f"{n_drop} slice(s) dropped (see slices[*].note)")
    return warnings


def isoflop_at(res: Dict, C) -> Dict[str, np.ndarray]:
    """N_opt, D_opt at budgets C (FLOPs) from a fit_isoflop result."""
    p = res["params"]
    C = np.asarray(C, float)
    return {"N": p["k_N"] * C ** p["a"], "D": p["k_D"] * C ** p["b"]}
