"""The compute-efficient frontier from many training curves (Kaplan Fig. 1; Hoffmann approaches 1, 2).

    from flopscale.fitting.runs import load_runs
    from flopscale.fitting.frontier import frontier
    fr = frontier(load_runs(["sweeps/cpu-small"]))
    fr["L_C"]["params"]["alpha_C"], fr["N_opt"]["exponent"], fr["isoflop"]["slices"]

Approach 1 (envelope): each run's loss curve is interpolated (log loss against log C, C the
measured cumulative non-embedding FLOPs) on a shared log-spaced grid of C; the frontier at each
grid C is the lowest loss any run reaches there, and the run that reaches it gives N_opt(C). We
fit L = (C_c/C)^alpha_C (law `c`) and N_opt = k C^a along it. The first `skip_frac` of every
run is left out: warmup transients sit below no one's frontier but pull the envelope's start.
The grid points are not independent draws (neighbouring points come from the same curve), so the
bootstrap intervals of these fits are narrower than the truth; read them as a lower bound.

C is the measured compute, not the paper's C_min: for runs at B << B_crit they agree; otherwise
pass the curves through laws.c_min first.

Approach 2 (isoFLOP): runs whose final compute agrees within `tol_dex` decades form a slice; a
parabola in log N through a slice's final losses gives N_opt at that C (needs >= 3 sizes, and the
minimum inside them), and N_opt(C) is fitted across >= 2 slices.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from .fit import FitError, fit, fit_power
from .runs import Run, run_point, smooth


def run_curve(run: Run, skip_frac: float = 0.1):
    """(C, loss) of one run: validation losses when it has >= 3 evaluations, else its train loss
    smoothed by a centred moving average (train loss is logged densely but noisy)."""
    keep = (run.step > skip_frac * np.nanmax(run.step)) & (run.flops > 0)
    ev = keep & np.isfinite(run.val_loss)
    if ev.sum() >= 3:
        return run.flops[ev], run.val_loss[ev]
    tr = keep & np.isfinite(run.train_loss)
    if tr.sum() < 3:
        return None
    return run.flops[tr], smooth(run.train_loss[tr])


def lower_envelope(runs: Sequence[Run], per_decade: int = 16, skip_frac: float = 0.1) -> Dict[str, np.ndarray]:
    """Grid of C (FLOPs) with the lowest loss over runs there, and N and run index attaining it."""
    curves = [(i, run_curve(r, skip_frac)) for i, r in enumerate(runs)]
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


def isoflop(points: Dict[str, np.ndarray], tol_dex: float = 0.1, names: Optional[List[str]] = None) -> Dict:
    """Hoffmann approach 2 on per-run final points {N, C, loss}: slices, parabola minima, N_opt(C)."""
    lc = np.log10(points["C"])
    order = np.argsort(lc)
    groups, cur = [], [order[0]]
    for a, b in zip(order[:-1], order[1:]):
        if lc[b] - lc[a] <= tol_dex:
            cur.append(b)
        else:
            groups.append(cur)
            cur = [b]
    groups.append(cur)
    slices = []
    for g in groups:
        g = np.array(g)
        Ns = points["N"][g]
        if np.unique(Ns).size < 3:
            continue
        x, y = np.log(Ns), np.log(points["loss"][g])
        a, b, c = np.polyfit(x, y, 2)
        C = float(10 ** lc[g].mean())
        s = {"C": C, "n_runs": int(g.size), "N": Ns.tolist(), "loss": points["loss"][g].tolist(),
             "parabola": [float(a), float(b), float(c)]}
        if a <= 0:
            s["note"] = "no minimum (loss not convex in log N): add sizes around the optimum"
        else:
            xm = -b / (2 * a)
            s["N_opt"] = float(np.exp(xm))
            s["loss_opt"] = float(np.exp(np.polyval([a, b, c], xm)))
            s["D_opt"] = C / (6.0 * s["N_opt"])  # C = 6 N D, the usual training-compute rule
            if not x.min() <= xm <= x.max():
                s["note"] = "minimum outside the sampled sizes: extrapolated"
        slices.append(s)
    out: Dict = {"slices": slices, "tol_dex": tol_dex}
    good = [s for s in slices if "N_opt" in s and "note" not in s]
    if len(good) >= 2:
        out["N_opt"] = fit_power([s["C"] for s in good], [s["N_opt"] for s in good], n_boot=0)
    else:
        out["note"] = f"{len(good)} usable isoFLOP slice(s); N_opt(C) needs >= 2 with >= 3 sizes each"
    return out


def frontier(runs: Sequence[Run], *, per_decade: int = 16, skip_frac: float = 0.1, point: str = "best",
             n_boot: int = 200, seed: int = 0, tol_dex: float = 0.1, return_boot: bool = False) -> Dict:
    """Envelope, L(C) and N_opt(C) along it (approach 1), and isoFLOP slices (approach 2)."""
    env = lower_envelope(runs, per_decade, skip_frac)
    out: Dict = {"envelope": {k: v.tolist() for k, v in env.items() if k != "run"},
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
    pts = [run_point(r, point) for r in runs]
    out["isoflop"] = isoflop({k: np.array([p[k] for p in pts]) for k in ("N", "C", "loss")}, tol_dex)
    if return_boot:
        return out, boot
    return out
