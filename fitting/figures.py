"""One figure per fit, the frontier and the isoFLOP slices (presentation: reads results only).

    from flopscale.fitting.figures import plot_entry
    plot_entry(entry, "report/n.png")      # entry: results.FitEntry

Each PNG shows the data, the fitted law, its 95% band (pointwise 2.5/97.5 percentiles of the
bootstrap fits' predictions, plotting.bootstrap_band) and the extrapolation to 100x the largest
scale (dashed), with the paper's law dotted for reference. Units: loss in nats/token, N
non-embedding parameters, D and B tokens, S optimizer steps, C non-embedding training FLOPs.
"""

from __future__ import annotations

from typing import List

import numpy as np

from .laws import LAWS, PAPER, PF_DAY, POSITION_FORMULA, position_law
from .plotting import bootstrap_band, save_figure
from .results import FitEntry


AXIS = {"N": "N (non-embedding parameters)", "D": "D (tokens)", "C": "C (non-embedding FLOPs)",
        "S": "S (steps)", "B": "B (tokens)", "loss": "loss (nats/token)"}


EXTRAPOLATE = 100.0  # plots run the fit out to 100x the largest scale in the data


def _groups(v: np.ndarray, k: int = 6):
    """Distinct values of a second input, or up to k log-spaced bins of it: [(label value, mask)]."""
    u = np.unique(v)
    if u.size <= k:
        return [(x, v == x) for x in u]
    edges = np.logspace(np.log10(v.min()), np.log10(v.max()) * (1 + 1e-12), k + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (v >= lo) & (v < hi)
        if m.any():
            out.append((float(np.exp(np.mean(np.log(v[m])))), m))
    return out


def plot_fit(entry: FitEntry, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, cols = entry.fit, entry.cols
    law = LAWS[res["law"]]
    params = res["params"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    if len(law.inputs) == 1:
        xk = law.inputs[0]
        x = cols[xk]
        if xk == "loss":  # bcrit: extrapolate toward lower loss (larger models)
            grid = np.exp(np.linspace(np.log(x.min() / 1.3), np.log(x.max()), 200))
            seen = grid >= x.min()
        else:
            grid = np.logspace(np.log10(x.min()), np.log10(x.max() * EXTRAPOLATE), 200)
            seen = grid <= x.max()
        y = law.predict(params, **{xk: grid})
        band = bootstrap_band(law, entry.boot, law.params, **{xk: grid})
        ax.scatter(x, cols[law.target], s=14, color="C0", zorder=3, label=f"data ({res['n_points']} points)")
        ax.plot(grid[seen], y[seen], color="C1", label="fit: " + law.formula)
        ax.plot(grid[~seen], y[~seen], color="C1", ls="--", label="extrapolation")
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="C1", alpha=0.25, lw=0, label="95% band (bootstrap)")
        total = bool(res.get("N_counts"))
        if res["law"] in PAPER and not total:
            ax.plot(grid, law.predict(PAPER[res["law"]], **{xk: grid}), color="0.5", ls=":", label="paper")
        ax.set_xlabel("N_total (all parameters, embeddings included)" if total else AXIS[xk])
    else:
        # two inputs: x axis the scale variable, one curve per value (or bin) of the other
        xk = "S" if res["law"] == "ns" else "N"
        ok = [k for k in law.inputs if k != xk][0]
        x = cols[xk]
        grid = np.logspace(np.log10(x.min()), np.log10(x.max() * EXTRAPOLATE), 120)
        seen = grid <= x.max()
        for i, (gv, m) in enumerate(_groups(cols[ok])):
            c = f"C{i % 10}"
            ax.scatter(x[m], cols[law.target][m], s=12, color=c, zorder=3)
            other = np.full_like(grid, gv)
            y = law.predict(params, **{xk: grid, ok: other})
            ax.plot(grid[seen], y[seen], color=c, label=f"{ok} = {gv:.3g}")
            ax.plot(grid[~seen], y[~seen], color=c, ls="--")
            band = bootstrap_band(law, entry.boot, law.params, **{xk: grid, ok: other})
            if band is not None:
                ax.fill_between(grid, band[0], band[1], color=c, alpha=0.2, lw=0)
        ax.set_xlabel(AXIS[xk])
        ax.set_title(law.formula + "  (dashed: extrapolation; bands: 95%)", fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel(AXIS[law.target])
    if len(law.inputs) == 1:
        ax.set_title(f"law {res['law']}: rmse_log {res['rmse_log']:.4f}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)
    return path


def plot_frontier(fr: dict, curves, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for C, L in curves:
        a1.plot(np.asarray(C) / PF_DAY, L, color="0.7", lw=0.8)
    env = fr["envelope"]
    C = np.array(env["C"])
    a1.plot(C / PF_DAY, env["loss"], color="k", lw=2, label="lower envelope")
    if "L_C" in fr:
        p = fr["L_C"]["params"]
        grid = np.logspace(np.log10(C.min()), np.log10(C.max() * EXTRAPOLATE), 100)
        a1.plot(grid / PF_DAY, LAWS["c"].predict(p, C=grid), color="C1", ls="--",
                label=f"L = (C_c/C)^{p['alpha_C']:.3f}")
    a1.set_xscale("log"); a1.set_yscale("log")
    a1.set_xlabel("C (PF-days, non-embedding)"); a1.set_ylabel(AXIS["loss"]); a1.legend(fontsize=7)
    a2.scatter(C / PF_DAY, env["N"], s=10, label="N on the envelope")
    if "N_opt" in fr:
        q = fr["N_opt"]
        a2.plot(C / PF_DAY, q["coef"] * C ** q["exponent"], color="C1", label=f"N_opt ~ C^{q['exponent']:.2f}")
    a2.set_xscale("log"); a2.set_yscale("log")
    a2.set_xlabel("C (PF-days)"); a2.set_ylabel("N"); a2.legend(fontsize=7)
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)
    return path


def plot_isoflop(entry: FitEntry, path: str) -> str:
    """Loss against N per budget with each slice's parabola and minimum; N_opt(C), D_opt(C)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    iso_slices_axes(a1, entry)
    iso_opt_axes(a2, entry)
    save_figure(fig, path)
    return path


def iso_slices_axes(a1, entry: FitEntry) -> None:
    """The isoFLOP slices: loss against N per budget, each slice's parabola and its minimum."""
    res, cols = entry.fit, entry.cols
    for i, sl in enumerate(res["slices"]):
        rows = np.array(sl["rows"])
        c = f"C{i % 10}" if "N_opt" in sl else "0.6"
        used = np.isin(rows, sl.get("used", []))
        a1.scatter(cols["N"][rows[used]], cols["loss"][rows[used]], s=14, color=c, zorder=3,
                   label=f"C = {sl['C']:.2g}" + ("" if "N_opt" in sl else " (dropped)"))
        a1.scatter(cols["N"][rows[~used]], cols["loss"][rows[~used]], s=14, facecolors="none", edgecolors=c, zorder=3)
        if "N_opt" in sl:
            par = sl["parabola"]
            lo, hi = sl["parabola"]["centre_lnN"] - sl["window_dex"] * np.log(10), \
                sl["parabola"]["centre_lnN"] + sl["window_dex"] * np.log(10)
            x = np.linspace(lo, hi, 80)
            p2, p1, p0 = par["coef"]
            u = x - par["centre_lnN"]
            a1.plot(np.exp(x), p2 * u * u + p1 * u + p0, color=c, lw=1)
            a1.scatter([sl["N_opt"]], [sl["loss_opt"]], marker="*", s=110, color=c, edgecolors="k", zorder=4)
    a1.set_xscale("log")
    a1.set_xlabel(AXIS["N"]); a1.set_ylabel(AXIS["loss"])
    a1.set_title("isoFLOP slices" + (f" (C {res['compute']})" if res.get("compute") else "")
                 + ": parabola in the window (hollow: outside it), star: minimum", fontsize=8)
    a1.legend(fontsize=6, ncol=2)
    a1.grid(True, which="both", alpha=0.3)


def iso_opt_axes(a2, entry: FitEntry) -> None:
    """N_opt(C) and D_opt(C) from the slices' minima, with the fitted power laws and bands."""
    res = entry.fit
    good = [sl for sl in res["slices"] if "N_opt" in sl]
    C = np.array([sl["C"] for sl in good])
    p = res["params"]
    grid = np.logspace(np.log10(C.min()), np.log10(C.max() * EXTRAPOLATE), 100)
    for key, col, coef, expo in (("N_opt", "C0", "k_N", "a"), ("D_opt", "C1", "k_D", "b")):
        a2.scatter(C, [sl[key] for sl in good], color=col, zorder=3, label=f"{key} per slice")
        a2.plot(grid, p[coef] * grid ** p[expo], color=col, label=f"{key} ~ C^{p[expo]:.3f}")
        if entry.boot is not None and len(entry.boot):
            j, k = list(res["params"]).index(expo), list(res["params"]).index(coef)
            ok = np.all(np.isfinite(entry.boot[:, [j, k]]), axis=1)
            if ok.sum() >= 10:
                pr = entry.boot[ok, k][:, None] * grid[None, :] ** entry.boot[ok, j][:, None]
                a2.fill_between(grid, np.percentile(pr, 2.5, axis=0), np.percentile(pr, 97.5, axis=0), color=col,
                                alpha=0.2, lw=0)
    a2.set_xscale("log"); a2.set_yscale("log")
    a2.set_xlabel(AXIS["C"] + (f", {res['compute']}" if res.get("compute") else ""))
    a2.set_ylabel("N (params), D (tokens)")
    a2.legend(fontsize=7)
    a2.grid(True, which="both", alpha=0.3)


def plot_data_constrained(entry: FitEntry, path: str) -> str:
    """Loss against epochs D/U per model-size group, with the law at each group's N and U."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, cols = entry.fit, entry.cols
    law = LAWS[res["law"]]
    ep = cols["D"] / cols["U"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, (gv, m) in enumerate(_groups(cols["N"])):
        c = f"C{i % 10}"
        a1.scatter(ep[m], cols["loss"][m], s=12, color=c, zorder=3)
        U = float(np.exp(np.mean(np.log(cols["U"][m]))))
        e = np.logspace(0, np.log10(max(ep.max(), 1.0) * 3), 80)
        a1.plot(e, law.predict(res["params"], N=np.full_like(e, gv), D=U * e, U=np.full_like(e, U)), color=c,
                label=f"N = {gv:.3g}, U = {U:.3g}")
    a1.set_xscale("log"); a1.set_xlabel("epochs D/U"); a1.set_ylabel(AXIS["loss"]); a1.legend(fontsize=6)
    pred = law.predict(res["params"], **{k: cols[k] for k in law.inputs})
    a2.scatter(cols["loss"], pred, s=10)
    lim = [min(cols["loss"].min(), pred.min()), max(cols["loss"].max(), pred.max())]
    a2.plot(lim, lim, color="0.5", ls=":")
    a2.set_xlabel("observed loss"); a2.set_ylabel("fitted loss")
    a2.set_title(f"rmse_log {res['rmse_log']:.4f}", fontsize=9)
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)
    return path


def plot_entry(entry: FitEntry, path: str) -> str:
    if entry.fit["law"] == "isoflop":
        return plot_isoflop(entry, path)
    if entry.fit["law"] == "data-constrained":
        return plot_data_constrained(entry, path)
    return plot_fit(entry, path)


def plot_positions(fits: List[dict], path: str) -> str:
    """Loss against position (log-log), one curve per run coloured by N, its fit dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"gpt": "-", "lstm": ":", "universal": "-."}
    for e in fits:
        y = np.asarray(e["losses"], dtype=float)
        t = np.arange(1, y.size + 1)
        label = f"{e['arch']} N={e['N']:.3g}" if e.get("N") else e["arch"]
        (line,) = ax.plot(t, y, styles.get(e["arch"], "-"), lw=1.2, label=label)
        if "params" in e:
            ax.plot(t, position_law(t.astype(float), **e["params"]), "--", color=line.get_color(), lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("token position t in the context")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"per-position loss; dashed: {POSITION_FORMULA}")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    return path
