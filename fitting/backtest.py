"""Backtest a law: fit on the rows with COL <= VALUE, predict the rest, measure the error.

    from flopscale.fitting.backtest import backtest, load_points
    cols = load_points(csv="points.csv")                       # or load_points(paths=["sweeps/s"], law="chinchilla")
    bt = backtest(cols, "chinchilla", "C=1e20")                # {"n_train", "n_test", "mape", "bias", ...}
    print(outlook_report.backtest_markdown(bt))

Errors are in percent of the observed target (the loss; B for bcrit): pct = 100 (pred / obs - 1);
``mape`` is the mean of |pct|, ``bias`` the mean of pct, ``max_abs_pct_err`` the largest |pct|.
``coverage90`` is the share of held-out points inside their 90% prediction interval, built as a
plan's (fitting/plan.py: each bootstrap draw's prediction times the residual scatter of the split
fit).  ``allocation_exponent`` is a = d log N_opt / d log C of the split fit beside the full fit
(chinchilla, data-constrained: beta/(alpha+beta); nd: alpha_D/(alpha_N+alpha_D); null for laws
without an allocation).  ``guards``: how far the held-out points lie past the fitted range, per
input column (warns past 100x, as a plan's guards do).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .estimator import FitError, fit
from .frontier import frontier
from .laws import LAWS
from .plan import EXTRAPOLATION_WARN, PI_LEVEL, draw_predictions, prediction_interval, residual_scale
from .runs import best_per, load_runs, read_csv, run_points

BACKTEST_N_BOOT = 200


def parse_split(split) -> Tuple[str, float]:
    """'C=1e20' or ("C", 1e20) -> ("C", 1e20); FitError on anything else."""
    if isinstance(split, (tuple, list)) and len(split) == 2:
        col, val = split
    else:
        col, sep, val = str(split).partition("=")
        if not sep or not col.strip():
            raise FitError(f"--split expects COL=VALUE (fit on COL <= VALUE), got {split!r}")
    try:
        v = float(val)
    except (TypeError, ValueError):
        raise FitError(f"--split {col}: value {val!r} is not a number") from None
    if not math.isfinite(v):
        raise FitError(f"--split {col}: value must be finite, got {val!r}")
    return str(col).strip(), v


def allocation_exponent(law: str, params: Dict[str, float]) -> Optional[float]:
    """a in N_opt ~ C^a at C = 6 N D, where the law has one."""
    if law in ("chinchilla", "data-constrained"):
        return params["beta"] / (params["alpha"] + params["beta"])
    if law == "nd":
        return params["alpha_D"] / (params["alpha_N"] + params["alpha_D"])
    return None


def backtest(cols: Dict, law: str, split, *, n_boot: int = BACKTEST_N_BOOT, seed: int = 0, grid: str = "full",
             level: float = PI_LEVEL) -> Dict:
    """Fit ``law`` on the rows with COL <= VALUE, predict the others (module docstring); returns a
    plain dict (JSON-ready)."""
    if law not in LAWS:
        raise FitError(f"backtest: law {law!r} does not predict each point; choose one of {', '.join(LAWS)}")
    col, val = parse_split(split)
    if col not in cols:
        raise FitError(f"--split {col}: no such column (columns: {', '.join(map(str, cols))})")
    if hasattr(cols[col], "message"):  # a text column of a CSV (fit.NonNumericColumn)
        raise FitError(f"--split {col}: {cols[col].message}")
    key = np.asarray(cols[col], dtype=float).ravel()
    if not np.all(np.isfinite(key)):
        raise FitError(f"--split {col}: the column has empty, NaN or infinite values")
    L = LAWS[law]
    need = list(L.inputs) + [L.target]
    full = fit(law, cols, n_boot=0, grid=grid, holdout=False)      # validates every row the law reads
    data = {k: np.asarray(cols[k], float).ravel() for k in need}
    train = key <= val
    n_train, n_test = int(train.sum()), int((~train).sum())
    if n_test == 0:
        raise FitError(f"--split {col}={val:g}: every row has {col} <= {val:g}; nothing is left to predict")
    if n_train == 0:
        raise FitError(f"--split {col}={val:g}: no row has {col} <= {val:g}; nothing to fit on")
    res, boot = fit(law, {k: v[train] for k, v in data.items()}, n_boot=n_boot, seed=seed, grid=grid,
                    holdout=False, return_boot=True)
    test = {k: v[~train] for k, v in data.items()}
    inputs = {k: test[k] for k in L.inputs}
    pred = L.predict(res["params"], **inputs)
    obs = test[L.target]
    pct = 100.0 * (pred / obs - 1.0)
    n_free = L.n_params - len(res.get("fixed") or {})
    sigma = residual_scale(res["rmse_log"], n_train, n_free)
    draws = draw_predictions(law, boot, L.params, **inputs) if n_boot else None
    points, inside = [], []
    for j in range(n_test):
        pi = prediction_interval(float(pred[j]), None if draws is None else draws[:, j], sigma, level, seed=seed + j)
        ok = pi is not None and pi[0] <= obs[j] <= pi[1]
        inside.append(ok)
        points.append(dict({k: float(test[k][j]) for k in L.inputs}, observed=float(obs[j]), predicted=float(pred[j]),
                           pct_err=float(pct[j]), pi90=pi, inside=bool(ok)))
    a_split, a_full = allocation_exponent(law, res["params"]), allocation_exponent(law, full["params"])
    out = {
        "law": law, "split": {"column": col, "value": val, "rule": f"fit on {col} <= {val:g}, predict {col} > {val:g}"},
        "target": L.target, "n_train": n_train, "n_test": n_test,
        "mape": float(np.mean(np.abs(pct))), "bias": float(np.mean(pct)), "max_abs_pct_err": float(np.max(np.abs(pct))),
        "coverage90": float(np.mean(inside)),
        "pi_method": (f"{n_boot} bootstrap draws of the split fit's parameters x residual scatter (log sd {sigma:.3g})"
                      if n_boot else f"residual scatter only (log sd {sigma:.3g}; --n-boot 0)"),
        "allocation_exponent": {"name": "a (N_opt ~ C^a at C = 6ND)", "split": a_split, "full": a_full,
                                "change": None if a_split is None else a_split - a_full},
        "params_split": res["params"], "params_full": full["params"], "ci95_split": res["ci95"],
        "rmse_log_split": res["rmse_log"], "warnings_split": res["warnings"],
        "guards": extrapolation_guards({k: data[k][train] for k in L.inputs}, inputs, col, key[train], key[~train]),
        "points": points,
    }
    out["warn"] = [g["message"] for g in out["guards"] if g["warn"]]
    return out


def extrapolation_guards(train: Dict[str, np.ndarray], test: Dict[str, np.ndarray], col: str, key_train, key_test) -> List[Dict]:
    """Per input (and the split column): the largest held-out value over the largest fitted one."""
    g = []
    cols = dict(test)
    tr = dict(train)
    if col not in cols:
        cols[col], tr[col] = key_test, key_train
    for k in cols:
        if k == "loss":  # bcrit: the "large" end is the low loss
            r = float(np.min(tr[k]) / np.min(cols[k]))
        else:
            r = float(np.max(cols[k]) / np.max(tr[k]))
        warn = r > EXTRAPOLATION_WARN
        g.append({"name": f"{k}_over_fitted", "value": r, "warn": warn,
                  "message": f"held-out {k} reaches {r:.3g}x the largest fitted {k}"
                             + (f"; more than {EXTRAPOLATION_WARN}x past the fitted range" if warn else "")})
    return g


def largest_budget_split(cols: Dict, col: str = "C", tol_dex: float = 0.1) -> Tuple[str, float]:
    """(col, value) that holds out the largest budget: the values of ``col`` are grouped where
    neighbours lie within ``tol_dex`` decades (one isoFLOP budget's runs differ a little in C), and
    the split falls halfway (in log) between the largest group and the one below it."""
    v = np.unique(np.asarray(cols[col], float))
    if v.size < 2:
        raise FitError(f"backtest: one value of {col}; nothing to hold out")
    lv = np.log10(v)
    starts = np.flatnonzero(np.diff(lv) > tol_dex)
    if starts.size == 0:
        raise FitError(f"backtest: every {col} lies within {tol_dex} decades of its neighbour; no separate largest budget")
    i = int(starts[-1])  # last gap: v[i] is the top of the group below, v[i + 1] the bottom of the largest
    return col, float(10 ** ((lv[i] + lv[i + 1]) / 2))


# ------------------------------------------------------------------------------------------------
# Points from a table or from runs
# ------------------------------------------------------------------------------------------------

def load_points(csv: Optional[str] = None, paths: Optional[Sequence[str]] = None, law: str = "chinchilla",
                point: str = "best", compute: str = "nonembedding") -> Dict:
    """Columns for a backtest: a CSV as written (columns N, D, C, S, B, U, loss, others kept), or,
    from run directories, one row per run (run_points: N, D, C, S, B, loss, and U with tokens seen
    for data-constrained), the lowest loss per N (per D) for law n (d), the compute frontier's
    envelope for law c.  bcrit and ns need a table (their points are per evaluation, not per run)."""
    if bool(csv) == bool(paths):
        raise FitError("backtest: give --csv FILE or run/sweep directories (one of the two)")
    if csv:

        return read_csv(str(csv))

    runs = load_runs([str(p) for p in paths])
    if law in ("bcrit", "ns"):
        raise FitError(f"backtest from runs: law {law!r} is fitted on per-evaluation points; write them to a table "
                       f"and use --csv")
    if law == "c":

        env = frontier(runs, point=point, n_boot=0, compute=compute)["envelope"]
        return {"C": np.asarray(env["C"], float), "loss": np.asarray(env["loss"], float),
                "N": np.asarray(env["N"], float), "D": np.asarray(env["D"], float)}
    pts = run_points(runs, point, compute=compute, tokens_seen=law == "data-constrained")
    if law == "n":
        return best_per(pts, "N")
    if law == "d":
        return best_per(pts, "D")
    return pts
