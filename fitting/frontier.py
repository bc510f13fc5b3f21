"""The compute-efficient frontier from many training curves (Kaplan Fig. 1; Hoffmann approaches 1, 2).

    from flopscale.fitting.runs import load_runs
    from flopscale.fitting.frontier import frontier
    fr = frontier(load_runs(["sweeps/cpu-small"]))
    fr["L_C"]["params"]["alpha_C"], fr["N_opt"]["exponent"]

Approach 1 (envelope): each run's loss curve is interpolated (log loss against log C, C the
measured cumulative non-embedding FLOPs) on a shared log-spaced grid of C; the frontier at each
grid C is the lowest loss any run reaches there, and the run that reaches it gives N_opt(C). We
fit L = (C_c/C)^alpha_C (law `c`) and N_opt = k C^a along it. The first `skip_frac` of every
run is left out: warmup transients sit below no one's frontier but pull the envelope's start.
The grid points are not independent draws (neighbouring points come from the same curve), so the
bootstrap intervals of these fits are narrower than the truth; read them as a lower bound.

C is the measured compute, not the paper's C_min: for runs at B << B_crit they agree; otherwise
pass the curves through laws.c_min first.

Approach 2 (isoFLOP slices) lives in fitting/isoflop.py.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from .fit import FitError, fit, fit_power
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
    """Grid of C (FLOPs) with the lowest loss over runs there, and N and run index attaining it."""
    curves = [(i, run_curve(r, skip_frac, compute)) for i, r in enumerate(runs)]
    curves = [(i, c) for i, c in curves if c is not None]
    if not curves:
        raise FitError("no run has a usable loss curve for the frontier")
    lo = min(c[0].min() for _, c in curves)
    hi = max(c[0].max() for _, c in curves)
    n = max(2, int(np.ceil(np.log10(hi / lo) * per_decade)) + 1)
    grid = np.logspace(np.log10(lo), np.log10(hi), n)
    best = np.full(n, np.inf)
    who = np.full(n, -1)
    for i, (C, L) in curves:
        o = np.argsort(C)
        lc, ll = np.log(C[o]), np.log(L[o])
        inside = (grid >= C.min() * (1 - 1e-12)) & (grid <= C.max() * (1 + 1e-12))
        vals = np.exp(np.interp(np.log(grid[inside]), lc, ll))
        cur = best[inside]
        better = vals < cur
        idx = np.flatnonzero(inside)[better]
        best[idx] = vals[better]
        who[idx] = i
    ok = np.isfinite(best)
    return {"C": grid[ok], "loss": best[ok], "N": np.array([runs[j].N for j in who[ok]]),
            "run": who[ok]}


def frontier(runs: Sequence[Run], *, per_decade: int = 16, skip_frac: float = 0.1, point: str = "best",
             n_boot: int = 200, seed: int = 0, compute: str = "nonembedding", return_boot: bool = False) -> Dict:
    """Envelope, L(C) and N_opt(C) along it (approach 1); C is `compute` ("nonembedding" or "all")."""
    env = lower_envelope(runs, per_decade, skip_frac, compute)
    out: Dict = {"compute": compute, "envelope": {k: v.tolist() for k, v in env.items() if k != "run"},
                 "envelope_runs": [runs[j].name for j in env["run"]]}
    boot = None
    if env["C"].size >= 3:
        res = fit("c", {"C": env["C"], "loss": env["loss"]}, n_boot=n_boot, seed=seed, return_boot=True)
        out["L_C"], boot = res
    else:
        out["L_C_note"] = "fewer than 3 envelope points"
    if np.unique(env["N"]).size >= 2:
        out["N_opt"] = fit_power(env["C"], env["N"], n_boot=n_boot, seed=seed)
        out["N_opt"]["n_sizes_on_frontier"] = int(np.unique(env["N"]).size)
    else:
        out["N_opt_note"] = "a single model size spans the whole frontier"
    if return_boot:
        return out, boot
    return out
