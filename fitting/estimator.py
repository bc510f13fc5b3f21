"""Robust log-space estimator for the scaling laws in fitting/laws.py, with bootstrap intervals.

    import numpy as np
    from flopscale.fitting.estimator import fit
    N = np.logspace(6, 9, 12)
    res = fit("n", {"N": N, "loss": (8.8e13 / N) ** 0.076})
    res["params"]["alpha_N"], res["ci95"]["alpha_N"], res["rmse_log"]

Objective (every law): sum over points of Huber(log target_pred - log target_obs), delta 1e-3
(Hoffmann et al. 2022, approach 3). Summed, not averaged: the per-point values are ~1e-6, and a
mean gives L-BFGS-B an objective whose decrease falls under its relative tolerance early.

Solvers:
- `n`, `d`, `c`, `bcrit` are linear in their internal parameters (log L = m - alpha * x), so the
  Huber fit is convex: iteratively reweighted least squares (exact for Huber, and vectorised over
  bootstrap replicates), then an L-BFGS-B polish.
- `nd`, `ns` run L-BFGS-B from a small grid over exponents and the split of the loss between
  the two terms (laws.py explains the parameterisation).
- `chinchilla` is Hoffmann's approach 3 exactly: a = log A, b = log B, e = log E, L-BFGS-B from
  every point of alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}
  (4500 starts), best by objective.

Large tables (more than FULL_GRID_MAX_POINTS = 200 points): the grid's objective is evaluated for
every start at once (numpy broadcasting over starts x points), and L-BFGS-B runs from the 100 best
starts only (then the same polish). On 20,000 rows that took the fit from over 5 minutes to ~40 s
(bench/bench_fit.py --rows); below 200 points every start is run, as Hoffmann et al. did.

Bootstrap: resample the points with replacement (seeded), refit, take the 2.5/97.5 percentiles
of each public parameter. Nonlinear refits start from the few distinct best optima of the full fit
rather than the whole grid (the full grid for every replicate would cost 4500x more and picks the
same basin); where the grid was screened, from the best optimum only. A fit that runs past 2 s shows tqdm
progress on stderr (on a terminal, or with progress=True). The leave-largest-out check (`holdout`) refits without the largest values of the
law's scale variable and reports the relative error of predicting them.
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy.optimize import minimize
from tqdm import tqdm

from ._threads import single_thread_blas
from .laws import HUBER_DELTA, LAWS, Law, chinchilla_allocation

N_BOOT = 200
# Every input and target of a fit lies in [1/MAX_VALUE, MAX_VALUE]: 1e40 is far above any N, D or C
# (FLOPs) of a real run, and beyond it powers like N^alpha leave float range (N = 1e300 fitted as a
# degenerate law instead of failing).
MAX_VALUE = 1e40
MAX_GRID_STARTS_BOOT = 3  # distinct optima of the full fit reused as bootstrap starts


class FitError(ValueError):
    """Input a fit cannot use. The message is one line, meant for the user."""


class NonNumericColumn:
    """A table column holding text (read_csv keeps it so that a law not using it can ignore it).

    check_points raises `message` (which names the file, line and value) only when a law needs it.
    """

    def __init__(self, message: str, size: int, values=None):
        self.message, self.size = message, size
        self.values = np.asarray(values, dtype=object) if values is not None else None  # raw cells, for --group

    def __len__(self) -> int:
        return self.size

    def take(self, mask) -> "NonNumericColumn":
        vals = None if self.values is None else self.values[mask]
        return NonNumericColumn(self.message, int(np.count_nonzero(mask)), vals)


def as_columns(table) -> Dict[str, object]:
    """A dict of arrays as given, or any table with `.columns` and `__getitem__` (a pandas
    DataFrame, without importing pandas) as {name: float array}; a column that is not numeric
    becomes a NonNumericColumn, an error only for a law that needs it."""
    if isinstance(table, dict):
        return table
    if not (hasattr(table, "columns") and hasattr(table, "__getitem__")):
        raise FitError(f"points must be a dict of arrays or a table with .columns (a DataFrame), "
                       f"got {type(table).__name__}")
    out: Dict[str, object] = {}
    for c in list(table.columns):
        col = table[c]
        raw = np.asarray(col.to_numpy() if hasattr(col, "to_numpy") else col, dtype=object).ravel()
        try:
            out[str(c)] = np.asarray(raw, dtype=float)
        except (TypeError, ValueError):
            i, bad = next((i, v) for i, v in enumerate(raw) if not _is_number(v))
            out[str(c)] = NonNumericColumn(f"column {str(c)!r} value {bad!r} (row {i}) is not a number", raw.size, raw)
    return out


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------

def positive_columns(cols: Dict[str, object], need) -> Dict[str, np.ndarray]:
    """The columns ``need`` as float arrays of one length, finite, positive (log-space fits) and
    within [1/MAX_VALUE, MAX_VALUE]; FitError with one line naming the column and row otherwise."""
    out, n = {}, None
    for k in need:
        if isinstance(cols[k], NonNumericColumn):
            raise FitError(cols[k].message)
        try:
            v = np.asarray(cols[k], dtype=float).ravel()
        except (TypeError, ValueError):
            raise FitError(f"column {k!r} holds values that are not numbers") from None
        if n is not None and v.size != n:
            raise FitError(f"columns have different lengths ({k!r} has {v.size}, expected {n})")
        n = v.size
        bad = ~np.isfinite(v)
        if bad.any():
            raise FitError(f"column {k!r} has {int(bad.sum())} NaN or infinite value(s) (first at row {int(np.argmax(bad))})")
        if (v <= 0).any():
            i = int(np.argmax(v <= 0))
            raise FitError(f"column {k!r} must be positive for a log-space fit; row {i} is {v[i]:g}")
        far = (v < 1.0 / MAX_VALUE) | (v > MAX_VALUE)
        if far.any():
            i = int(np.argmax(far))
            raise FitError(f"column {k!r} row {i} is {v[i]:g}, outside the range a fit can use "
                           f"({1.0 / MAX_VALUE:g} to {MAX_VALUE:g}); check the column's values and units")
        out[k] = v
    return out


def check_points(law: str, cols: Dict[str, object], n_fixed: int = 0) -> Dict[str, np.ndarray]:
    """Validate and convert the columns a law needs; raise FitError with one line otherwise.

    A fit needs more points than free parameters (n_params - n_fixed): with as many, it
    interpolates, the residuals are zero and every bootstrap interval would have zero width."""
    if law not in LAWS:
        raise FitError(f"unknown law {law!r}; choose one of {', '.join(LAWS)}")
    L = LAWS[law]
    need = list(L.inputs) + [L.target]
    missing = [k for k in need if k not in cols]
    if missing:
        raise FitError(f"law {law!r} needs column(s) {', '.join(need)}; missing {', '.join(missing)}")
    out = positive_columns(cols, need)
    n = len(next(iter(out.values())))
    n_free = L.n_params - n_fixed
    if n <= n_free:
        raise FitError(f"law {law!r} has {n_free} free parameter(s) but only {n} point(s) were given; "
                       f"a fit needs more points than free parameters")
    if "U" in out and "D" in out:
        over = out["U"] > out["D"] * (1 + 1e-9)
        if over.any():
            i = int(np.argmax(over))
            raise FitError(f"column 'U' (unique tokens) exceeds 'D' (tokens seen) at row {i}: "
                           f"{out['U'][i]:g} > {out['D'][i]:g}")
    for k in L.inputs:
        if np.unique(out[k]).size < 2:
            raise FitError(f"law {law!r} needs at least 2 distinct values of {k}; all {n} points have {k} = {out[k][0]:g}")
    return out


# ------------------------------------------------------------------------------------------------
# Objective and solvers
# ------------------------------------------------------------------------------------------------

def huber(r: np.ndarray, delta: float) -> Tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals r and its derivative (quadratic inside |r| <= delta)."""
    c = np.clip(r, -delta, delta)
    # c * (r - c/2) is r^2/2 inside the band and delta*(|r| - delta/2) outside: one formula, no branch
    return c * (r - 0.5 * c), c


def _objective(theta, law: Law, x, logy, delta):
    f, J = law.log_fn(theta, x)
    val, d = huber(f - logy, delta)
    return float(val.sum()), d @ J


# Tight tolerances for the final answer: summed Huber values here are ~1e-4..1e-2 and scipy's
# defaults (ftol 2.2e-9, gtol 1e-5) can stop while the exponent still moves in the 4th digit.
TIGHT = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10}
# The 4500-start Chinchilla grid runs at scipy's defaults, then the best few optima are polished
# with TIGHT: same winner, ~40% fewer evaluations per start.
GRID = {"maxiter": 2000}


def _lbfgs(theta0, law, x, logy, delta, options=TIGHT):
    return minimize(_objective, np.asarray(theta0, float), args=(law, x, logy, delta), jac=True,
                    method="L-BFGS-B", options=options)


def _irls(X: np.ndarray, y: np.ndarray, delta: float, iters: int = 500, tol: float = 1e-10) -> np.ndarray:
    """Huber regression y ~ X theta by iteratively reweighted least squares, batched.

    X: (R, n, p), y: (R, n) for R replicates. Weights min(1, delta/|r|) make each step the
    majorise-minimise update of the Huber objective, so it decreases monotonically to the
    (convex) optimum. tol is on theta (log-loss units): 1e-10 is far below any bootstrap spread,
    and the main fit is polished by L-BFGS-B anyway. Returns theta (R, p).
    """
    Xt = np.swapaxes(X, 1, 2)  # (R, p, n)
    w = np.ones_like(y)
    theta = None
    for _ in range(iters):
        Xtw = Xt * w[:, None, :]
        new = np.linalg.solve(Xtw @ X, (Xtw @ y[..., None]))[..., 0]
        if theta is not None and np.max(np.abs(new - theta)) < tol:
            theta = new
            break
        theta = new
        r = y - (X @ theta[..., None])[..., 0]
        w = np.minimum(1.0, delta / np.maximum(np.abs(r), 1e-300))
    return theta


def _linear_design(law: Law, x) -> np.ndarray:
    # log target = theta . [1, -x]: the Jacobian of a linear law is its design matrix
    _, J = law.log_fn(np.zeros(law.n_params), x)
    return J


def hoffmann_grid() -> np.ndarray:
    """Hoffmann et al.'s 4500 starts, as internal (a, b, e, alpha, beta) rows."""
    alpha = np.arange(0.0, 2.01, 0.5)
    e = np.arange(-1.0, 1.01, 0.5)
    ab = np.arange(0.0, 25.01, 5.0)
    return np.array([(a, b, ee, al, be) for a, b, ee, al, be in itertools.product(ab, ab, e, alpha, alpha)])


def _coarse_hoffmann() -> np.ndarray:
    # a 3-point-per-axis subset of Hoffmann's grid (243 starts)
    g = hoffmann_grid()
    keep = (np.isin(g[:, 0], [0, 10, 20]) & np.isin(g[:, 1], [0, 10, 20]) & np.isin(g[:, 2], [-1, 0, 1])
            & np.isin(g[:, 3], [0, 0.5, 1]) & np.isin(g[:, 4], [0, 0.5, 1]))
    return g[keep]


# Decay constants the data-constrained starts take (Muennighoff et al. fit 15.4 and 5.3).
R_STAR_STARTS = {"R_D_star": (4.0, 15.0, 50.0), "R_N_star": (1.5, 5.0, 15.0)}


def _start_grid(law: Law, x, logy, grid: str) -> np.ndarray:
    if law.name == "data-constrained":
        # Hoffmann's coarse 243 x 9 decay constants (2187 starts): the full 4500 x 9 would take
        # minutes. The usual two-stage fit (--fix of the five Chinchilla constants) leaves 9.
        base = _coarse_hoffmann()
        rs = [(np.log(d), np.log(n)) for d in R_STAR_STARTS["R_D_star"] for n in R_STAR_STARTS["R_N_star"]]
        return np.array([np.concatenate([b, r]) for b in base for r in rs])
    if law.name == "chinchilla":
        if grid == "full":
            return hoffmann_grid()
        # "coarse": a 3-point-per-axis subset for quick interactive use; documented, never default
        return _coarse_hoffmann()
    ybar = float(np.mean(logy))  # log loss at the centre of the data
    rows = []
    if law.name == "nd":
        # log L_centre = aD * log(T), T split between the N term (rho) and the D term (1 - rho)
        for aD, r, rho in itertools.product((0.05, 0.1, 0.2, 0.4), (0.4, 0.7, 1.0, 1.5), (0.2, 0.5, 0.8)):
            T = ybar / aD
            rows.append((T + math.log(rho), r, T + math.log(1 - rho), aD))
    elif law.name == "ns":
        for aN, aS, rho in itertools.product((0.03, 0.08, 0.2), (0.3, 0.7, 1.5), (0.2, 0.5, 0.8)):
            rows.append((ybar + math.log(rho), aN, ybar + math.log(1 - rho), aS))
    else:
        raise AssertionError(law.name)
    return np.array(rows)


def _distinct(thetas: List[np.ndarray], k: int, tol: float = 1e-4) -> List[np.ndarray]:
    out: List[np.ndarray] = []
    for t in thetas:
        if all(np.max(np.abs(t - o)) > tol for o in out):
            out.append(t)
        if len(out) == k:
            break
    return out


def _solve(law: Law, x, logy, delta, grid="full", starts: Optional[np.ndarray] = None, progress=None):
    """Best internal theta by summed Huber objective; returns (theta, objective, ranked optima, n_starts)."""
    if law.linear:
        X = _linear_design(law, x)
        th0 = _irls(X[None], logy[None], delta)[0]
        res = _lbfgs(th0, law, x, logy, delta)
        th = res.x if res.fun <= _objective(th0, law, x, logy, delta)[0] else th0
        return th, _objective(th, law, x, logy, delta)[0], [th], 1
    if starts is None:
        starts = _start_grid(law, x, logy, grid)
    keep = _screened(law, np.asarray(starts, float), x, logy, delta)
    return _multistart(law.name, starts, _objective, (law, x, logy, delta), keep, progress)


# Large tables: a start grid's objective is evaluated for every start at once (numpy broadcasting
# over starts x points, in chunks of SCREEN_CHUNK values), and L-BFGS runs from the SCREEN_KEEP
# best starts only. At or below FULL_GRID_MAX_POINTS points every start gets its L-BFGS run, as
# Hoffmann et al. did (cheap there: 4500 starts on 33 points take seconds).
FULL_GRID_MAX_POINTS = 200
SCREEN_KEEP = 100
SCREEN_CHUNK = 1_000_000


def _screened(law: Law, thetas: np.ndarray, x, logy, delta) -> Optional[np.ndarray]:
    """Indices of the SCREEN_KEEP starts (internal theta rows) of lowest objective, or None where
    every start is to be run (a small table or a short list of starts)."""
    n = logy.size
    if n <= FULL_GRID_MAX_POINTS or len(thetas) <= SCREEN_KEEP:
        return None
    vals = np.empty(len(thetas))
    k = max(1, SCREEN_CHUNK // n)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(0, len(thetas), k):
            th = thetas[i:i + k]
            # each law's log_fn is elementwise in theta's components: one row per (start, point) pair
            f, _ = law.log_fn(np.repeat(th, n, axis=0).T, {c: np.tile(v, len(th)) for c, v in x.items()})
            vals[i:i + k] = huber(f.reshape(len(th), n) - logy, delta)[0].sum(axis=1)
    vals[~np.isfinite(vals)] = np.inf
    return np.argsort(vals, kind="stable")[:SCREEN_KEEP]


def _progress(total: int, desc: str, progress):
    """A tqdm bar on stderr for a long loop: shown after PROGRESS_DELAY_S seconds only, and only on
    a terminal unless progress=True (progress=False: never)."""
    return tqdm(total=total, desc=desc, file=sys.stderr, delay=PROGRESS_DELAY_S, leave=False,
                disable=(None if progress is None else not progress), mininterval=0.5)


PROGRESS_DELAY_S = 2.0


def _multistart(name: str, starts, objective, args, keep=None, progress=None):
    """L-BFGS from every start (or from starts[keep], the screened few; loose tolerances on a big
    grid, then the best distinct optima polished tight, kept only where polishing did not make
    them worse); returns (best point, its objective, the distinct optima, the number of starts).
    ``objective(point, *args)`` returns (value, gradient): the free parameters (``_objective``)
    or the ones left by --fix (``_objective_z``)."""
    def run(p, options=TIGHT):
        return minimize(objective, np.asarray(p, float), args=args, jac=True, method="L-BFGS-B", options=options)

    results = []
    opts = GRID if len(starts) > 100 else TIGHT
    todo = starts if keep is None else [starts[i] for i in keep]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
            _progress(len(todo), f"{name}: starts", progress) as bar:
        for s in todo:
            bar.update()
            r = run(s, opts)
            if np.isfinite(r.fun) and np.all(np.isfinite(r.x)):
                results.append((r.fun, r.x))
        if not results:
            raise FitError(f"law {name!r}: the optimizer diverged from every start")
        results.sort(key=lambda t: t[0])
        if opts is not TIGHT:
            polished = []
            for p in _distinct([t for _, t in results], 2 * MAX_GRID_STARTS_BOOT, tol=1e-3):
                r = run(p)
                f0 = objective(p, *args)[0]
                polished.append((r.fun, r.x) if r.fun <= f0 else (f0, p))
            results = sorted(polished, key=lambda t: t[0])
    optima = _distinct([t for _, t in results], MAX_GRID_STARTS_BOOT)
    return results[0][1], results[0][0], optima, len(starts)


# ------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------

def _holdout_mask(law: Law, cols, n_fixed: int = 0) -> Optional[np.ndarray]:
    """Points at the largest eighth (at least one) of the distinct values of the scale variable."""
    key = law.holdout_on
    v = cols[key] if key != "loss" else 1.0 / cols[key]  # low loss is the "large" end for bcrit
    distinct = np.unique(np.round(np.log(v), 9))
    if distinct.size < 3:
        return None
    k = max(1, distinct.size // 8)
    mask = np.round(np.log(v), 9) >= distinct[-k]
    if (~mask).sum() < law.n_params - n_fixed + 1:
        return None
    return mask


# ------------------------------------------------------------------------------------------------
# Fixed parameters (--fix): the two-stage fits of the papers
# ------------------------------------------------------------------------------------------------

def _log_scaled(name: str) -> bool:
    # exponents move on their own scale; constants (N_c, E, A, B, R_D_star, ...) on a log scale
    return not (name.startswith("alpha") or name == "beta" or name in ("a", "b"))


def parse_fix(spec) -> Dict[str, float]:
    """'alpha=0.34,beta=0.28' (or a dict) -> {name: value}; FitError on a malformed entry."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise FitError(f"--fix expects NAME=VALUE[,NAME=VALUE...], got {part!r}")
            k, v = part.split("=", 1)
            items.append((k.strip(), v.strip()))
    out = {}
    for k, v in items:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise FitError(f"--fix {k}: value {v!r} is not a number") from None
        if not math.isfinite(f):
            raise FitError(f"--fix {k}: value must be finite, got {v!r}")
        out[k] = f
    return out


def check_fix(law: Law, fixed: Dict[str, float]) -> Dict[str, float]:
    for k, v in fixed.items():
        if k not in law.params:
            raise FitError(f"--fix {k}: not a parameter of law {law.name!r} (its parameters: {', '.join(law.params)})")
        if _log_scaled(k) and not v > 0:
            raise FitError(f"--fix {k}: must be positive, got {v:g}")
    if len(fixed) >= law.n_params:
        raise FitError(f"--fix holds every parameter of law {law.name!r}; nothing is left to fit")
    return fixed


class _Fixed:
    """The free public parameters z (log scale for constants) <-> the law's internal theta.

    With some public parameters held, the internal coordinates of a centred law are coupled
    (in L = (N_c/N)^alpha, fixing N_c ties m to alpha), so the optimizer moves z and the chain
    rule goes through d theta / d z, by central differences of to_internal (smooth, cheap)."""

    def __init__(self, law: Law, fixed: Dict[str, float], centres):
        self.law, self.fixed, self.centres = law, dict(fixed), centres
        self.free = [k for k in law.params if k not in fixed]

    def public(self, z) -> Dict[str, float]:
        p = dict(self.fixed)
        for k, v in zip(self.free, z):
            p[k] = float(np.exp(v)) if _log_scaled(k) else float(v)
        return p

    def theta(self, z) -> np.ndarray:
        return np.asarray(self.law.to_internal(self.public(z), self.centres), float)

    def jac(self, z) -> np.ndarray:
        z = np.asarray(z, float)
        cols = []
        for j in range(z.size):
            h = 1e-6 * max(1.0, abs(z[j]))
            zp, zm = z.copy(), z.copy()
            zp[j] += h
            zm[j] -= h
            cols.append((self.theta(zp) - self.theta(zm)) / (2 * h))
        return np.stack(cols, axis=1)

    def project(self, theta) -> Optional[np.ndarray]:
        with np.errstate(all="ignore"):
            p = self.law.to_public(theta, self.centres)
        z = []
        for k in self.free:
            v = p[k]
            if _log_scaled(k):
                if not (v > 0 and math.isfinite(v)):
                    return None
                v = math.log(v)
            if not math.isfinite(v):
                return None
            z.append(v)
        return np.array(z)


def _objective_z(z, prob: _Fixed, x, logy, delta):
    th = prob.theta(z)
    val, g = _objective(th, prob.law, x, logy, delta)
    if not np.isfinite(val):
        return val, np.zeros_like(z)
    return val, g @ prob.jac(z)


def _lbfgs_z(z0, prob, x, logy, delta, options=TIGHT):
    return minimize(_objective_z, np.asarray(z0, float), args=(prob, x, logy, delta), jac=True,
                    method="L-BFGS-B", options=options)


def _solve_fixed(prob: _Fixed, x, logy, delta, grid="full", starts_z: Optional[List[np.ndarray]] = None,
                 progress=None):
    """Best z by summed Huber objective from projected starts; returns (z, objective, optima, n_starts)."""
    L = prob.law
    if starts_z is None:
        if L.linear:
            th0 = _irls(_linear_design(L, x)[None], logy[None], delta)[0]
            internal = [th0]
        else:
            internal = list(_start_grid(L, x, logy, grid))
        starts_z = [z for z in (prob.project(t) for t in internal) if z is not None]
        starts_z = _distinct(starts_z, len(starts_z) or 1, tol=1e-9)
    if not starts_z:
        raise FitError(f"law {L.name!r}: no usable start with the fixed parameters")
    keep = _screened(L, np.array([prob.theta(z) for z in starts_z]), x, logy, delta)
    return _multistart(L.name, starts_z, _objective_z, (prob, x, logy, delta), keep, progress)


# ------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------

def fit(law: str, cols: Dict[str, object], *, delta: float = HUBER_DELTA, n_boot: int = N_BOOT,
        seed: int = 0, grid: str = "full", holdout: bool = True, return_boot: bool = False,
        fix=None, progress: Optional[bool] = None):
    """Fit one law to points; cols maps column names (N, D, C, S, B, U, loss) to arrays.

    fix: {name: value} or "name=value,..." holds public parameters fixed (reported under "fixed",
    with ci95 null). Returns {"law", "params", "ci95", "n_points", "loss_fn", "rmse_log",
    "formula", "holdout", "n_boot", "seed", "ranges", "warnings", "fixed"} (plus "allocation" for
    chinchilla and data-constrained); with return_boot=True also the (n_boot, n_params) array of
    bootstrap public parameters (columns in the law's parameter order, fixed ones constant).
    progress: a tqdm bar on stderr for a fit that runs longer than 2 s (None: only on a terminal).
    """
    if law not in LAWS:
        raise FitError(f"unknown law {law!r}; choose one of {', '.join(LAWS)}")
    fixed = check_fix(LAWS[law], parse_fix(fix))
    data = check_points(law, as_columns(cols), n_fixed=len(fixed))
    with single_thread_blas():
        return _fit(law, data, delta, n_boot, seed, grid, holdout, return_boot, fixed, progress)


def _fit(law, data, delta, n_boot, seed, grid, holdout, return_boot, fixed=None, progress=None):
    L = LAWS[law]
    fixed = fixed or {}
    centres = L.centres(data)
    x = L.design(data, centres)
    logy = np.log(data[L.target])
    n = logy.size

    prob = _Fixed(L, fixed, centres) if fixed else None
    if prob is None:
        theta, obj, optima, n_starts = _solve(L, x, logy, delta, grid, progress=progress)
    else:
        z, obj, optima, n_starts = _solve_fixed(prob, x, logy, delta, grid, progress=progress)
        theta = prob.theta(z)
    params = L.to_public(theta, centres)
    params.update(fixed)  # exact values, not round-tripped through the internal vector
    f, _ = L.log_fn(theta, x)
    rmse = float(np.sqrt(np.mean((f - logy) ** 2)))

    screened = n > FULL_GRID_MAX_POINTS and n_starts > SCREEN_KEEP  # as _screened decided
    boot = _bootstrap(L, x, logy, centres, delta, n_boot, seed, optima, prob, fixed, law, progress, screened)
    ci95, boot_warnings = bootstrap_intervals(L.params, boot, fixed, n_boot)

    hold = _holdout(L, data, x, logy, centres, delta, grid, optima, prob, fixed) if holdout else None
    ranges = {k: [float(data[k].min()), float(data[k].max())] for k in list(L.inputs) + [L.target]}
    out = {
        "law": law,
        "params": {k: float(params[k]) for k in L.params},
        "ci95": ci95,
        "n_points": int(n),
        "loss_fn": f"huber(delta={delta:g}) on log residuals, summed",
        "rmse_log": rmse,
        "formula": L.formula,
        "objective": float(obj),
        "n_starts": int(n_starts),
        "n_boot": int(n_boot),
        "seed": int(seed),
        "ranges": ranges,
        "holdout": hold,
        "fixed": {k: float(v) for k, v in fixed.items()},
        "warnings": identifiability_warnings(L, data, params, ci95) + boot_warnings,
    }
    if law in ("chinchilla", "data-constrained"):
        out["allocation"] = _allocation_with_ci(out["params"], boot, L.params)
    if return_boot:
        return out, boot
    return out


def _bootstrap(L: Law, x, logy, centres, delta, n_boot, seed, optima, prob, fixed, law, progress,
               screened: bool = False) -> np.ndarray:
    """(n_boot, n_params) public parameters refitted on resamples of the points (NaN where a refit failed)."""
    n = logy.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = np.full((n_boot, L.n_params), np.nan)
    if n_boot:
        if L.linear and prob is None:
            X = _linear_design(L, x)
            # a resample with one distinct x cannot fix a slope; draw those again (rare for n >= 5)
            for r in range(n_boot):
                while np.unique(X[idx[r], 1]).size < 2 and np.unique(X[:, 1]).size >= 2:
                    idx[r] = rng.integers(0, n, size=n)
            ths = _irls(X[idx], logy[idx], delta)
            for r in range(n_boot):
                p = L.to_public(ths[r], centres)
                boot[r] = [p[k] for k in L.params]
        else:
            # Where the start grid was screened (a large table), the resamples stay in the full fit's
            # basin: refit from its best optimum only. Elsewhere from the few best optima, as before.
            starts = np.array(optima[:1] if screened else optima)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                    _progress(n_boot, f"{law}: bootstrap", progress) as bar:
                for r in range(n_boot):
                    bar.update()
                    xr = {k: v[idx[r]] for k, v in x.items()}
                    best = None
                    for s in starts:
                        res = (_lbfgs(s, L, xr, logy[idx[r]], delta) if prob is None
                               else _lbfgs_z(s, prob, xr, logy[idx[r]], delta))
                        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                            best = res
                    if best is not None:
                        p = L.to_public(best.x if prob is None else prob.theta(best.x), centres)
                        p.update(fixed)
                        boot[r] = [p[k] for k in L.params]
    return boot


def _holdout(L: Law, data, x, logy, centres, delta, grid, optima, prob, fixed) -> dict:
    """The leave-largest-out check: refit without the largest values of the scale variable, predict them."""
    mask = _holdout_mask(L, data, len(fixed))
    if mask is None:
        return {"skipped": "too few distinct values of " + L.holdout_on}
    sub = {k: v[~mask] for k, v in data.items()}
    xs = {k: v[~mask] for k, v in x.items()}
    if prob is None:
        starts = None if L.linear else np.array(optima)
        th_h, _, _, _ = _solve(L, xs, logy[~mask], delta, grid, starts=starts)
    else:
        z_h, _, _, _ = _solve_fixed(prob, xs, logy[~mask], delta, grid, starts_z=list(optima))
        th_h = prob.theta(z_h)
    p_h = L.to_public(th_h, centres)
    p_h.update(fixed)
    pred = L.predict(p_h, **{k: data[k][mask] for k in L.inputs})
    rel = pred / data[L.target][mask] - 1.0
    key = L.holdout_on
    return {"held_out": key, "values": sorted({float(v) for v in data[key][mask]}),
            "n_held_out": int(mask.sum()),
            "fit_range": [float(sub[key].min()), float(sub[key].max())],
            "rel_err_mean": float(np.mean(np.abs(rel))), "rel_err_max": float(np.max(np.abs(rel))),
            "params": p_h}


def bootstrap_intervals(names, boot: np.ndarray, fixed, n_boot: int):
    """2.5/97.5 percentiles of each free parameter's bootstrap column, and warnings for intervals
    that are not 95% intervals. Returns ({name: [lo, hi] or None}, [warning, ...]).

    None: the parameter is fixed, or n_boot is 0 (no interval was asked for: no warning either).
    Flagged (the interval is still reported, with a warning in the fit and the report): fewer than
    half of the resamples refitted; every resample gave the same value (zero width: the points
    pin nothing down, or a resample cannot move the estimate); half or more of the resamples sit at
    one extreme value (they ran into a bound or a plateau of the objective, so the percentile is
    the bound, not the data's uncertainty)."""
    ci, warn = {}, []
    for j, k in enumerate(names):
        if k in fixed or not n_boot:
            ci[k] = None
            continue
        col = boot[:, j][np.isfinite(boot[:, j])]
        if not col.size:
            ci[k] = None
            warn.append(f"{k}: none of the {n_boot} bootstrap resamples could be refitted; no interval")
            continue
        lo, hi = float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5))
        ci[k] = [lo, hi]
        tol = 1e-9 * max(1.0, float(np.max(np.abs(col))))
        if col.size < 0.5 * n_boot:
            warn.append(f"{k}: only {col.size} of {n_boot} bootstrap resamples could be refitted; the interval "
                        f"is not a 95% interval")
        if float(np.ptp(col)) <= tol:
            warn.append(f"{k}: every bootstrap resample gave {col[0]:.4g}; a zero-width interval is not a 95% "
                        f"interval (the resamples cannot move it)")
            continue
        for side, v in (("lowest", col.min()), ("highest", col.max())):
            frac = float(np.mean(np.abs(col - v) <= tol))
            if frac >= 0.5:
                warn.append(f"{k}: {100 * frac:.0f}% of the bootstrap resamples sit at the same {side} value "
                            f"{v:.4g} (a bound or a plateau); the interval is degenerate, not a 95% interval")
    return ci, warn


def _allocation_with_ci(params, boot, names) -> Dict:
    """Approach 3's N_opt = G (C/6)^a, D_opt = (C/6)^b / G from the fit and each bootstrap refit."""
    al = chinchilla_allocation(params)
    rows = [chinchilla_allocation(dict(zip(names, r))) for r in boot if np.all(np.isfinite(r))]
    ci = {}
    for k in ("a", "b", "G"):
        v = np.array([r[k] for r in rows], float)
        v = v[np.isfinite(v)]
        ci[k] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else None
    return dict(al, ci95=ci, formula="N_opt = G (C/6)^a, D_opt = (C/6)^b / G, a = beta/(alpha+beta), "
                                     "b = alpha/(alpha+beta), G = (alpha A/(beta B))^(1/(alpha+beta))")


def identifiability_warnings(L: Law, data, params, ci95) -> List[str]:
    """Plain-language warnings when the data cannot pin the exponents down."""
    w = []
    for k in L.inputs:
        # B_crit(L): losses never span a decade (the interval check below covers it); U: one
        # unique-token budget is a normal data-constrained design, the repetition check covers it
        if k in ("loss", "U"):
            continue
        v = data[k]
        nd = np.unique(np.round(np.log(v), 9)).size
        dec = float(np.log10(v.max() / v.min()))
        if nd < 4 or dec < 1.0:
            w.append(f"{k}: {nd} distinct value(s) over {dec:.2f} decade(s); too few to separate the "
                     f"exponents, read the 95% intervals rather than the point values")
    for k in L.params:
        if not (k.startswith("alpha") or k == "beta"):
            continue
        if ci95[k] is None:  # held fixed
            continue
        lo, hi = ci95[k]
        v = params[k]
        if not np.isfinite(lo) or (v != 0 and (hi - lo) > 0.5 * abs(v)):
            w.append(f"{k}: 95% interval [{lo:.3g}, {hi:.3g}] is wider than half the estimate {v:.3g}; "
                     f"the data do not determine it")
    if "U" in L.inputs:
        rep = data["D"] / np.minimum(data["U"], data["D"])
        if not (rep > 1.0 + 1e-9).any():
            w.append("no point repeats its data (D <= U everywhere): R_D_star is not determined")
        elif np.unique(np.round(np.log(rep[rep > 1 + 1e-9]), 6)).size < 2:
            w.append("a single repetition count: R_D_star rests on one epoch number")
    return w


def fit_power(x, y, *, delta: float = HUBER_DELTA, n_boot: int = N_BOOT, seed: int = 0) -> Dict:
    """y = coef * x^exponent by the same Huber log-space fit (IRLS), with bootstrap intervals.

    For relations that are not one of the named laws: N_opt(C), D_opt(C), S_min(B)...
    Returns {"exponent", "coef", "ci95": {"exponent": [lo, hi], "coef": [lo, hi]}, "rmse_log",
    "n_points", "x_ref"}: coef is y at x = 1, so for C in FLOPs it is y per FLOP^exponent.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if x.size <= 2:
        raise FitError(f"a power-law fit has 2 parameters and needs at least 3 points, got {x.size}")
    if np.unique(x).size < 2:
        raise FitError("a power-law fit needs at least two distinct x values")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and (x > 0).all() and (y > 0).all()):
        raise FitError("a power-law fit needs finite, positive x and y")
    cx = float(np.mean(np.log(x)))
    X = np.stack([np.ones_like(x), np.log(x) - cx], axis=1)
    ly = np.log(y)
    with single_thread_blas():
        th = _irls(X[None], ly[None], delta)[0]
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, x.size, size=(n_boot, x.size))
        ok = np.array([np.unique(x[i]).size >= 2 for i in idx], dtype=bool) if n_boot else np.zeros(0, bool)
        ths = _irls(X[idx[ok]], ly[idx[ok]], delta) if ok.any() else np.zeros((0, 2))
    coef = lambda t: np.exp(t[..., 0] - t[..., 1] * cx)
    r = ly - X @ th
    ci = {"exponent": [float(np.percentile(ths[:, 1], 2.5)), float(np.percentile(ths[:, 1], 97.5))] if len(ths) else [math.nan] * 2,
          "coef": [float(np.percentile(coef(ths), 2.5)), float(np.percentile(coef(ths), 97.5))] if len(ths) else [math.nan] * 2}
    return {"exponent": float(th[1]), "coef": float(coef(th)), "ci95": ci,
            "rmse_log": float(np.sqrt(np.mean(r ** 2))), "n_points": int(x.size)}
