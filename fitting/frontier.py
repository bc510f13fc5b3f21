"""The compute-efficient frontier from many training curves (Kaplan Fig. 1; Hoffmann approaches 1, 2).

    from flopscale.fitting.runs import load_runs
    from flopscale.fitting.frontier import frontier
    fr = frontier(load_runs(["sweeps/cpu-small"]))
    fr["L_C"]["params"]["alpha_C"], fr["N_opt"]["exponent"]

Approach 1 (envelope): each run's loss curve is interpolated (log loss against log C, C the
measured cumulative non-embedding FLOPs) on a shared log-spaced grid of C; the frontier at each
grid C is the best loss reached with compute <= C (a running minimum over every curve, a stopped
run's best loss included), so it never rises; `N`, `D` are the run and tokens that reached it.
We fit L = (C_c/C)^alpha_C (law `c`) to every envelope point. N_opt(C) and D_opt(C) follow
Hoffmann et al.'s approach 1: at each C, the run with the lowest loss among the curves that pass
through C (`N_at_C`, `D_at_C`); a stopped run carried flat says nothing about which size uses C
best. The first `skip_frac` of every run is left out: warmup transients sit below no one's
frontier but pull the envelope's start. The grid points are not independent draws (neighbouring
points come from the same curve), so the bootstrap intervals of these fits are narrower than the
truth; read them as a lower bound.

C is the measured compute, not the paper's C_min: for runs at B << B_crit they agree; otherwise
pass the curves through laws.c_min first.

Approach 2 (isoFLOP slices) lives in fitting/isoflop.py.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from .estimator import FitError, fit, fit_power
from .runs import Run, smooth


def run_curve(run: Run, skip_frac: float = 0.1, compute: str = "nonembedding"):
    """(C, loss) of one run: validation losses when it has >= 3 evaluations, else its train loss
    smoothed by a centred moving average (train loss is logged densely but noisy)."""
    C = run.compute(compute)
    with np.errstate(invalid="ignore"):
        keep = (run.step > skip_frac * np.nanmax(run.step)) & np.isfinite(C) & (C > 0)
    ev = keep & np.isfinite(run.val_loss)
    if ev.sum() >= 3:
        return C[ev], run.val_loss[ev]
    tr = keep & np.isfinite(run.train_loss)
    if tr.sum() < 3:
        return None
    return C[tr], smooth(run.train_loss[tr])


def lower_envelope(runs: Sequence[Run], per_decade: int = 16, skip_frac: float = 0.1,
                   compute: str = "nonembedding") -> Dict[str, np.ndarray]:
    """Grid of C (FLOPs) with the best loss reached with compute <= C, and the N, run and tokens
    attaining it.

    The frontier is a running minimum, so it never rises: at each grid C every run contributes its
    curve interpolated there if it reaches C, or, if it stopped earlier, the lowest loss it
    reached (a stopped run's loss is a real achieved loss, available to anyone with more compute),
    and the envelope then takes the running minimum over C. Without this, runs of different
    lengths leave a saw-tooth: a short run's cosine cooldown ends below the longer runs, which
    are still at a high learning rate at that C. `carried` marks grid points whose loss was
    reached at a lower C (by a stopped run, or earlier on a curve that then rose); `D` is the
    attaining run's tokens at the C where it reached that loss."""
    curves = [(i, run_curve(r, skip_frac, compute)) for i, r in enumerate(runs)]
    curves = [(i, c) for i, c in curves if c is not None]
    if not curves:
        raise FitError("no run has a usable loss curve for the frontier")
    # start where the smallest model's curve starts: below it only the early, high-loss stretch of
    # larger models exists, which is no one's frontier (the smallest models own the low-C end)
    n_min = min(runs[i].N for i, _ in curves)
    lo = min(c[0].min() for i, c in curves if runs[i].N == n_min)
    hi = max(c[0].max() for _, c in curves)
    n = max(2, int(np.ceil(np.log10(hi / lo) * per_decade)) + 1)
    grid = np.logspace(np.log10(lo), np.log10(hi), n)
    best = np.full(n, np.inf)
    who = np.full(n, -1)
    at_c = np.full(n, np.nan)      # the C at which the attaining run reached the loss
    here = np.full(n, np.inf)      # lowest loss among the curves that pass through C
    who_here = np.full(n, -1)
    for i, (C, L) in curves:
        o = np.argsort(C)
        lc, ll = np.log(C[o]), np.log(L[o])
        inside = (grid >= C.min() * (1 - 1e-12)) & (grid <= C.max() * (1 + 1e-12))
        vals = np.full(n, np.inf)
        where = np.full(n, np.nan)
        vals[inside] = np.exp(np.interp(np.log(grid[inside]), lc, ll))
        where[inside] = grid[inside]
        after = grid > C.max() * (1 + 1e-12)
        j = int(np.argmin(L))
        vals[after], where[after] = L[j], C[j]   # stopped: its best loss stays reachable
        better = vals < best
        best[better], who[better], at_c[better] = vals[better], i, where[better]
        b2 = inside & (vals < here)
        here[b2], who_here[b2] = vals[b2], i
    ok = np.isfinite(best)
    best, who, at_c, grid, who_here = best[ok], who[ok], at_c[ok], grid[ok], who_here[ok]
    # running minimum over C: the best loss reached with compute <= C
    carried = np.zeros(best.size, bool)
    for k in range(1, best.size):
        if best[k] >= best[k - 1]:
            best[k], who[k], at_c[k] = best[k - 1], who[k - 1], at_c[k - 1]
            carried[k] = True
    carried |= at_c < grid * (1 - 1e-9)
    D = np.array([_tokens_at(runs[j], c, compute) for j, c in zip(who, at_c)])
    D_here = np.array([_tokens_at(runs[j], c, compute) for j, c in zip(who_here, grid)])
    return {"C": grid, "loss": best, "N": np.array([runs[j].N for j in who]), "run": who, "D": D,
            "carried": carried, "N_at_C": np.array([runs[j].N for j in who_here]), "D_at_C": D_here,
            "run_at_C": who_here}


def _tokens_at(run: Run, C: float, compute: str) -> float:
    """Tokens the run had trained on when its cumulative compute reached C."""
    c = run.compute(compute)
    ok = np.isfinite(c) & np.isfinite(run.tokens) & (c > 0) & (run.tokens > 0)
    if ok.sum() < 2:
        return float(C / (6.0 * run.N))
    return float(np.exp(np.interp(np.log(C), np.log(c[ok]), np.log(run.tokens[ok]))))


def frontier(runs: Sequence[Run], *, per_decade: int = 16, skip_frac: float = 0.1, point: str = "best",
             n_boot: int = 200, seed: int = 0, compute: str = "nonembedding", return_boot: bool = False,
             fit_law: bool = True) -> Dict:
    """Envelope, L(C) and N_opt(C) along it (approach 1); C is `compute` ("nonembedding" or "all").
    fit_law=False leaves L(C) out ("L_C"): fit_and_report fits law `c` to the envelope once, itself."""
    env = lower_envelope(runs, per_decade, skip_frac, compute)
    out: Dict = {"compute": compute,
                 "envelope": {k: v.tolist() for k, v in env.items() if k not in ("run", "run_at_C")},
                 "envelope_runs": [runs[j].name for j in env["run"]],
                 "envelope_runs_at_C": [runs[j].name for j in env["run_at_C"]],
                 "envelope_rule": "best loss reached with compute <= C (running minimum over every curve; "
                                  "a stopped run's best loss counts at every larger C); non-increasing in C"}
    boot = None
    if env["C"].size >= 3 and not fit_law:
        pass
    elif env["C"].size >= 3:
        res = fit("c", {"C": env["C"], "loss": env["loss"]}, n_boot=n_boot, seed=seed, return_boot=True)
        out["L_C"], boot = res
    else:
        out["L_C_note"] = "fewer than 3 envelope points"
    if np.unique(env["N_at_C"]).size >= 2:
        out["N_opt"] = fit_power(env["C"], env["N_at_C"], n_boot=n_boot, seed=seed)
        out["N_opt"]["n_sizes_on_frontier"] = int(np.unique(env["N_at_C"]).size)
        out["D_opt"] = fit_power(env["C"], env["D_at_C"], n_boot=n_boot, seed=seed)
    else:
        out["N_opt_note"] = "a single model size spans the whole frontier"
    if return_boot:
        return out, boot
    return out
