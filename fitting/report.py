"""Plots and the markdown report for a set of fits (what `flopscale fit --out DIR` writes).

    from flopscale.fitting.estimator import fit
    from flopscale.fitting.report import FitEntry, write_report
    res, boot = fit("n", cols, return_boot=True)
    write_report("report/", [FitEntry(res, boot, cols, source="csv")])
    # report/fits.json, report/n.png, report/report.md

Every file goes through flopscale.fileio's atomic writes (PNGs via fig.savefig(f, format="png")).

Each PNG shows the data, the fitted law, its 95% band (pointwise 2.5/97.5 percentiles of the
bootstrap fits' predictions) and the extrapolation to 100x the largest scale (dashed), with the
paper's law dotted for reference. Units: loss in nats/token, N non-embedding parameters, D and B
tokens, S optimizer steps, C non-embedding training FLOPs (tables add PF-days, 8.64e19 FLOPs).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from flopscale.fileio import atomic_write, atomic_write_json, atomic_write_text

from .laws import (LAWS, PAPER, PAPER_ALLOCATION_EMPIRICAL, PAPER_ALLOCATION_HOFFMANN, PF_DAY,
                   allocation_exponents)

UNITS = {"k_N": "params / FLOP^a", "k_D": "tokens / FLOP^b", "R_D_star": "repetitions", "R_N_star": "excess-parameter ratio",
         "N_c": "params", "D_c": "tokens", "C_c": "FLOPs", "S_c": "steps", "B_star": "tokens",
         "E": "nats/token", "A": "nats/token * N^alpha", "B": "nats/token * D^beta"}
AXIS = {"N": "N (non-embedding parameters)", "D": "D (tokens)", "C": "C (non-embedding FLOPs)",
        "S": "S (steps)", "B": "B (tokens)", "loss": "loss (nats/token)"}
EXTRAPOLATE = 100.0  # plots run the fit out to 100x the largest scale in the data


@dataclass
class FitEntry:
    fit: dict                      # the dict fit() returns
    boot: Optional[np.ndarray]     # (n_boot, n_params) bootstrap public parameters, law's order
    cols: Dict[str, np.ndarray]    # the points it was fitted to
    source: str = ""               # where the points came from ("runs: best val_loss per run", ...)
    name: str = ""                 # file stem; defaults to the law

    @property
    def stem(self) -> str:
        return self.name or self.fit["law"]


def clean_json(o):
    """numpy scalars/arrays to Python, NaN and inf to null (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    if isinstance(o, np.ndarray):
        return clean_json(o.tolist())
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    return o


# ------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------

def _band(law, boot, names, **cols):
    if boot is None or not len(boot):
        return None
    preds = []
    for row in boot:
        if not np.all(np.isfinite(row)):
            continue
        with np.errstate(all="ignore"):
            p = law.predict(dict(zip(names, row)), **cols)
        if np.all(np.isfinite(p)):
            preds.append(p)
    if len(preds) < 10:
        return None
    preds = np.array(preds)
    return np.percentile(preds, 2.5, axis=0), np.percentile(preds, 97.5, axis=0)


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
        band = _band(law, entry.boot, law.params, **{xk: grid})
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
            band = _band(law, entry.boot, law.params, **{xk: grid, ok: other})
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
    _save(fig, path)
    return path


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


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
    _save(fig, path)
    return path


def plot_isoflop(entry: FitEntry, path: str) -> str:
    """Loss against N per budget with each slice's parabola and minimum; N_opt(C), D_opt(C)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    iso_slices_axes(a1, entry)
    iso_opt_axes(a2, entry)
    _save(fig, path)
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
    _save(fig, path)
    return path


def plot_entry(entry: FitEntry, path: str) -> str:
    if entry.fit["law"] == "isoflop":
        return plot_isoflop(entry, path)
    if entry.fit["law"] == "data-constrained":
        return plot_data_constrained(entry, path)
    return plot_fit(entry, path)


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    v = float(v)
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 or v == 0 else f"{v:.3e}"


def _param_cell(k, v):
    s = _fmt(v)
    if k == "C_c" and v is not None and math.isfinite(v):
        s += f" ({_fmt(v / PF_DAY)} PF-days)"
    return s


def _interval(r, k) -> str:
    if r["ci95"].get(k) is None:
        return "fixed" if k in (r.get("fixed") or {}) else "— (no bootstrap)"
    lo, hi = r["ci95"][k]
    return f"[{_fmt(lo)}, {_fmt(hi)}]"


def _ci_text(ci) -> str:
    return "(no interval)" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _fit_section(e: FitEntry, png: Optional[str]) -> List[str]:
    r = e.fit
    paper = {} if r.get("N_counts") else PAPER.get(r["law"], {})
    if r["law"] == "isoflop":
        paper = PAPER_ALLOCATION_HOFFMANN["approach 2"]
    out = [f"## `{e.stem}`: {r['formula']}", ""]
    if e.source:
        out += [f"Points: {e.source}." + (f" C: {r['compute']}." if r.get("compute") else "")
                + (f" N counts {r['N_counts']}; Kaplan et al. quote no power law for it (Fig. 6)." if r.get("N_counts")
                   else ""), ""]
    out += ["| parameter | fitted | 95% interval | paper | units |", "| --- | --- | --- | --- | --- |"]
    for k, v in r["params"].items():
        out.append(f"| {k} | {_param_cell(k, v)} | {_interval(r, k)} | {_param_cell(k, paper.get(k))} | "
                   f"{UNITS.get(k, '—')} |")
    if r.get("fixed"):
        out += ["", "Held fixed (`--fix`, no interval): " + ", ".join(f"{k} = {_fmt(v)}" for k, v in r["fixed"].items())
                + "."]
    if r["law"] == "isoflop":
        bc = r["budget_correction"]
        out += ["", f"n_points {r['n_points']} in {len(r['slices'])} slices (budgets within {r['tol_dex']:g} dex), "
                    f"{r['n_slices_used']} used; {r['loss_fn']}; {r['n_boot']} bootstrap resamples within slices "
                    f"(seed {r['seed']}). Unequal budgets within a slice "
                    + (f"moved to the slice's C (dL*/dlnC {bc['dL_dlnC']:.4g}, dlnN_opt/dlnC {bc['dlnN_opt_dlnC']:.3g})."
                       if bc["applied"] else "not corrected (equal, or too few slices)."), "",
                "| C (FLOPs) | points | used | N_opt | D_opt | D/N | loss_opt | note |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for sl in r["slices"]:
            out.append(f"| {_fmt(sl['C'])} | {sl['n_points']} | {sl.get('n_used', 0)} | {_fmt(sl.get('N_opt'))} | "
                       f"{_fmt(sl.get('D_opt'))} | {_fmt(sl.get('tokens_per_param'))} | {_fmt(sl.get('loss_opt'))} | "
                       f"{sl.get('note', '')} |")
        if r.get("warnings"):
            out += [""] + [f"- {w}" for w in r["warnings"]]
        if png:
            out += ["", f"![{e.stem}]({os.path.basename(png)})"]
        return out + [""]
    if r.get("allocation"):
        al = r["allocation"]
        out += ["", f"Approach 3 allocation: N_opt = G (C/6)^a with a = {_fmt(al['a'])} "
                    f"{_ci_text(al['ci95']['a'])}, b = {_fmt(al['b'])} "
                    f"{_ci_text(al['ci95']['b'])}, G = {_fmt(al['G'])} "
                    f"{_ci_text(al['ci95']['G'])}."]
    out += ["", f"n_points {r['n_points']}, rmse_log {r['rmse_log']:.4g} (log-space residual RMS), "
                f"loss {r['loss_fn']}, {r['n_starts']} optimizer start(s), {r['n_boot']} bootstrap resamples "
                f"(seed {r['seed']})."]
    h = r.get("holdout")
    if h and "skipped" not in h:
        vals = h["values"]
        held = ([_fmt(v) for v in vals] if len(vals) <= 6
                else f"[{_fmt(min(vals))} .. {_fmt(max(vals))}]")
        out += ["", f"Leave-largest-out: fitted without {h['held_out']} in {held} "
                    f"({h['n_held_out']} points), predicting them has mean relative error "
                    f"{100 * h['rel_err_mean']:.2f}% (max {100 * h['rel_err_max']:.2f}%)."]
    elif h:
        out += ["", f"Leave-largest-out: skipped ({h['skipped']})."]
    if r.get("warnings"):
        out += ["", "**The data cannot fully separate this law's constants:**", ""]
        out += [f"- {w}" for w in r["warnings"]]
    if png:
        out += ["", f"![{e.stem}]({os.path.basename(png)})"]
    return out + [""]


def _allocation_section(entries: List[FitEntry]) -> List[str]:
    by = {e.fit["law"]: e.fit for e in entries}
    pa = allocation_exponents(PAPER["ns"]["alpha_N"], PAPER["ns"]["alpha_S"], PAPER["bcrit"]["alpha_B"])
    fitted = None
    if "ns" in by and "bcrit" in by:
        fitted = allocation_exponents(by["ns"]["params"]["alpha_N"], by["ns"]["params"]["alpha_S"],
                                      by["bcrit"]["params"]["alpha_B"])
    out = ["## Compute-efficient allocation", "",
           "Derived from alpha_N, alpha_S (law `ns`) and alpha_B (law `bcrit`): 1/alpha_C_min = "
           "1/alpha_S + 1/alpha_B + 1/alpha_N, N ~ C^(alpha_C/alpha_N), B ~ C^(alpha_C/alpha_B), "
           "S ~ C^(alpha_C/alpha_S), D = B S. The paper is not self-consistent here: its measured "
           "exponents (last column) differ from those its own constants imply (middle column).", "",
           "| exponent of C_min | derived from these fits | derived from the paper's constants | paper, empirical |",
           "| --- | --- | --- | --- |"]
    emp = dict(PAPER_ALLOCATION_EMPIRICAL, alpha_C_min=0.050)
    for k in ("alpha_C_min", "N", "B", "S", "D"):
        out.append(f"| {k} | {_fmt(fitted[k]) if fitted else '— (needs ns and bcrit fits)'} | {_fmt(pa[k])} | "
                   f"{_fmt(emp.get(k))} |")
    return out + [""]


def _approaches_section(entries: List[FitEntry], frontiers: Optional[dict]) -> List[str]:
    """Approaches 1, 2 and 3 side by side: the exponents of N_opt, D_opt against C."""
    rows = []
    for conv, fr in (frontiers or {}).items():
        if "N_opt" in fr:
            q = fr["N_opt"]
            rows.append((f"1 (envelope, C {conv})", q["exponent"], q["ci95"]["exponent"], None, None, "—"))
    for e in entries:
        r = e.fit
        if r["law"] == "isoflop":
            rows.append((f"2 (`{e.stem}`" + (f", C {r['compute']})" if r.get("compute") else ")"), r["params"]["a"],
                         r["ci95"]["a"], r["params"]["b"], r["ci95"]["b"], "—"))
        elif r.get("allocation"):
            al = r["allocation"]
            rows.append((f"3 (`{e.stem}`)", al["a"], al["ci95"]["a"], al["b"], al["ci95"]["b"], _fmt(al["G"])))
    if not rows:
        return []

    def iv(ci):
        return "—" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"

    out = ["## Compute-optimal allocation: approaches 1, 2, 3", "",
           "N_opt ~ C^a, D_opt ~ C^b. Approach 1: N along the lower envelope of the curves; 2: minima of isoFLOP "
           "slices; 3: from the fitted L(N, D), a = beta/(alpha+beta), b = alpha/(alpha+beta), "
           "N_opt = G (C/6)^a. Hoffmann et al. 2022 (Table 2) found a = 0.50, 0.49, 0.46 by approaches 1, 2, 3; "
           "Kaplan et al. 0.73.", "",
           "| approach | a | 95% interval | b | 95% interval | G |", "| --- | --- | --- | --- | --- | --- |"]
    for name, a, ca, b, cb, G in rows:
        out.append(f"| {name} | {_fmt(a)} | {iv(ca)} | {_fmt(b)} | {iv(cb) if b is not None else '—'} | {G} |")
    return out + [""]


def _groups_section(groups: Optional[dict]) -> List[str]:
    """One column per value of the --group column, one row per law and parameter."""
    if not groups or not groups.get("params"):
        return []
    vals = groups["values"]
    out = [f"## Side by side: one fit per `{groups['column']}`", "",
           "| law | parameter | " + " | ".join(f"{groups['column']} = {v}" for v in vals) + " |",
           "| --- | --- | " + " | ".join("---" for _ in vals) + " |"]
    for law, params in groups["params"].items():
        for k, by in params.items():
            out.append(f"| `{law}` | {k} | " + " | ".join(_fmt(by.get(v)) for v in vals) + " |")
    return out + [""]


def _study_section(s: Optional[dict]) -> List[str]:
    """What the runs span: sizes, tokens, compute in both conventions, the non-embedding share."""
    if not s or not s.get("n_runs"):
        return []

    def rg(k, unit=""):
        r = s.get(k + "_range")
        return "—" if not r else f"{_fmt(r[0])} to {_fmt(r[1])}{unit} ({math.log10(r[1] / r[0]):.2f} decades)"
    out = ["## About this study", "",
           f"| quantity | range |", "| --- | --- |",
           f"| {'runs' if s['source'] == 'runs' else 'table rows'} | {s['n_runs']} ({s['n_sizes']} model sizes"
           + (f"; depths {', '.join(map(str, s['n_layers']))} layers" if s.get("n_layers") else "") + ") |",
           f"| N, non-embedding parameters | {rg('N')} |",
           f"| N_total, all parameters | {rg('N_total')} |",
           f"| D, tokens at each run's point | {rg('D')} |",
           f"| tokens per parameter | {rg('tokens_per_param')} |",
           f"| C, non-embedding FLOPs (Kaplan's C) | {rg('C')} |",
           f"| C, all FLOPs | {rg('C_all')} |",
           f"| loss (nats/token) | {rg('loss')} |"]
    sh = s.get("nonembedding_share")
    if sh:
        out.append(f"| non-embedding share of compute (flops / flops_total) | {100 * sh['min']:.1f}% to "
                   f"{100 * sh['max']:.1f}% (median {100 * sh['median']:.1f}%) |")
    out.append("")
    if sh:
        out += [f"The paper's C counts non-embedding FLOPs only; here the embedding, de-embedding and other rows are "
                f"{100 * (1 - sh['median']):.0f}% of the median run's compute, so fits under `compute: all` (the "
                f"`_all` entries) and under Kaplan's C can differ, and both are shown.", ""]
    elif s["source"] == "runs":
        out += ["The runs log no flops_total: the non-embedding share of compute is unknown.", ""]
    else:
        out += ["A table carries one C (the convention --compute declares): the non-embedding share of compute is "
                "not known from it.", ""]
    if s.get("fixed_token_budget"):
        out += [f"Every run's point sits at the same {_fmt(s['D_range'][0])} tokens: L(N) is read at a fixed token "
                f"budget, not at convergence.", ""]
    g = s.get("c_vs_6ND") or {}
    if g:
        out += ["Measured C against 6ND (approach 3's convention) over these points: "
                + "; ".join(f"C_{k} ~ (6ND)^{v['gamma']:.3f}, C/6ND from {v['ratio_range'][0]:.3g} to "
                            f"{v['ratio_range'][1]:.3g}" for k, v in g.items()) + ".", ""]
    return out


def _cooldown_section(s: Optional[dict], payload: dict) -> List[str]:
    cds = (s or {}).get("cooldowns") or []
    if not cds:
        return []
    envs = {k: v for k, v in payload.items() if k == "frontier" or k.startswith("frontier_")}
    out = ["## Points from cooldown branches", "",
           "These runs start from another run's checkpoint (config.json `train.init_from`, a warmup-stable-decay "
           "cooldown). Their points enter the fits like any run's; the panels draw their curves dashed and their "
           "points as diamonds.", "",
           "| run | parent | from step | N | tokens | loss | on the frontier |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in cds:
        on = [f"{k}: {sum(1 for r in v.get('envelope_runs', []) if r == c['run'])} points" for k, v in envs.items()
              if c["run"] in v.get("envelope_runs", [])]
        out.append(f"| `{c['run']}` | `{c['parent']}` | {c.get('step', '?')} | {_fmt(c['N'])} | {_fmt(c['D'])} | "
                   f"{_fmt(c['loss'])} | {', '.join(on) or 'no'} |")
    notes = [f"- `{c['run']}`: {c['compute_note']}" for c in cds if c.get("compute_note")]
    return out + ([""] + notes if notes else []) + [""]


def _exponent_section(rows: List[dict]) -> List[str]:
    from .study import sources_note

    if not rows:
        return []
    out = ["## Fitted exponents next to Kaplan et al. 2020 and Hoffmann et al. 2022", "",
           "Approach 3 works in C = 6ND (Hoffmann et al.'s convention); its rows are also converted to each measured "
           "convention through the power law C ~ (6ND)^gamma these runs follow. Hoffmann et al.'s N counts all "
           "parameters, Kaplan et al.'s only non-embedding ones.", "",
           "| quantity | fit | compute | this study | 95% interval | Kaplan et al. | Hoffmann et al. | note |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['quantity']} | `{r['fit']}` | {r.get('compute') or '—'} | {_fmt(r['value'])} | "
                   f"{_ci_text(r['ci95']) if r['ci95'] is not None else '—'} | {_fmt(r['kaplan'])} | "
                   f"{_fmt(r['hoffmann'])} | {r.get('note', '')} |")
    return out + ["", "Reference numbers:", ""] + sources_note() + [""]


def _caveat_section(lines: Dict[str, str]) -> List[str]:
    if not lines:
        return []
    return (["## What this study can and cannot tell", "", "One line per fit, computed from its points and intervals.",
             ""] + [f"- `{k}`: {v}." for k, v in lines.items()] + [""])


def build_payload(entries: List[FitEntry], *, frontiers: Optional[dict] = None, compute: str = "nonembedding",
                  batch: Optional[dict] = None, inputs: str = "", skipped: Optional[Dict[str, str]] = None,
                  study: Optional[dict] = None) -> dict:
    """The fits.json content (strict JSON: NaN and inf as null). study: study.summarise's dict."""
    payload = {"inputs": inputs, "fits": [dict(e.fit, source=e.source, name=e.stem) for e in entries]}
    frontiers = frontiers or {}
    for conv, fr in frontiers.items():
        key = "frontier" if conv == compute else f"frontier_{conv}"
        payload[key] = {k: v for k, v in fr.items() if k != "L_C"}
    if batch is not None:
        payload["batch"] = batch
    if skipped:
        payload["skipped"] = skipped
    by = {e.fit["law"]: e.fit for e in entries}
    if "ns" in by and "bcrit" in by:
        payload["allocation"] = allocation_exponents(by["ns"]["params"]["alpha_N"], by["ns"]["params"]["alpha_S"],
                                                     by["bcrit"]["params"]["alpha_B"])
    payload["allocation_paper"] = {"derived": allocation_exponents(PAPER["ns"]["alpha_N"], PAPER["ns"]["alpha_S"],
                                                                   PAPER["bcrit"]["alpha_B"]),
                                   "empirical": PAPER_ALLOCATION_EMPIRICAL,
                                   "hoffmann_table2": PAPER_ALLOCATION_HOFFMANN}
    from .study import caveats, exponent_rows

    payload = clean_json(payload)
    if study is not None:
        payload["study"] = clean_json(study)
    payload["exponents"] = clean_json(exponent_rows(payload, study))
    payload["caveats"] = caveats(payload, study)
    return payload


def write_report(out_dir: str, entries: List[FitEntry], payload: dict, *, frontier_curves=None,
                 study: Optional[dict] = None, ablations=None) -> Dict[str, str]:
    """Write fits.json (payload), one PNG per fit, the six panels and overview.png (fitting/panels.py)
    and report.md into out_dir; returns {name: path}. study: study.study_from_runs / _from_table;
    ablations: ablations.Ablations, whose figures and sections (payload["ablations"]) come last."""
    from .panels import write_panels

    os.makedirs(out_dir, exist_ok=True)
    written: Dict[str, str] = {}
    pngs = {}
    for e in entries:
        pngs[e.stem] = plot_entry(e, os.path.join(out_dir, f"{e.stem}.png"))
        written[e.stem] = pngs[e.stem]
    frontier = payload.get("frontier")
    frontiers = {k[len("frontier_"):] if k != "frontier" else (frontier or {}).get("compute", "nonembedding"): v
                 for k, v in payload.items() if k == "frontier" or k.startswith("frontier_")}
    if frontier is not None:
        written["frontier"] = plot_frontier(frontier, frontier_curves or [], os.path.join(out_dir, "frontier.png"))
    panels = write_panels(out_dir, entries, payload, study)
    written.update(panels)
    payload["panels"] = {k: os.path.basename(v) for k, v in panels.items()}
    if payload.get("positions"):
        from .positions import plot_positions
        written["positions"] = plot_positions(payload["positions"], os.path.join(out_dir, "positions.png"))
    if ablations is not None and payload.get("ablations"):
        written.update(ablations.write(out_dir))  # names the PNGs in payload["ablations"]
    fj = os.path.join(out_dir, "fits.json")
    atomic_write_json(fj, payload, indent=1)
    written["fits.json"] = fj

    skipped = payload.get("skipped")
    inputs = payload.get("inputs", "")
    batch = payload.get("batch")
    md = ["# flopscale fit report", ""]
    if inputs:
        md += [f"Inputs: {inputs}.", ""]
    md += ["Units: loss in nats/token; N non-embedding parameters; D and B in tokens; S optimizer steps; "
           "C training FLOPs, non-embedding unless an entry says `compute: all` (1 PF-day = 8.64e19 FLOPs). "
           "Fits minimise a Huber loss (delta 1e-3) on log residuals, summed over points; intervals are "
           "bootstrap percentiles. The paper column quotes Kaplan et al. 2020 (Hoffmann et al. 2022 for "
           "`chinchilla` and `isoflop`, Muennighoff et al. 2023 for `data-constrained`); small-scale runs are "
           "not expected to match it.", ""]
    md += ["| fit | formula | compute | n_points | rmse_log | warnings |", "| --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        md.append(f"| `{e.stem}` | {e.fit['formula']} | {e.fit.get('compute', '—')} | {e.fit['n_points']} | "
                  f"{e.fit['rmse_log']:.4g} | {len(e.fit.get('warnings') or [])} |")
    md.append("")
    if skipped:
        md += ["Not fitted: " + "; ".join(f"`{k}` ({v})" for k, v in skipped.items()) + ".", ""]
    md += _study_section(payload.get("study"))
    md += ["## The study at a glance", "",
           "Kaplan et al.'s Figure 1 laid out for these runs: 1 loss against compute (curves coloured by N, the "
           "frontier, the L(C) fit), 2 against tokens, 3 against N beside N_total (embeddings included, Figure 6), "
           "4 N_opt(C) by Hoffmann et al.'s approaches 1, 2, 3 under both compute conventions, 5 B_crit(L), "
           "6 the isoFLOP slices. Dashed curves and diamonds are cooldown branches. Each panel is also its own "
           "file: " + ", ".join(f"[{k}]({os.path.basename(v)})" for k, v in panels.items() if k != "overview") + ".",
           "", "![overview](overview.png)", ""]
    md += _caveat_section(payload.get("caveats"))
    md += _exponent_section(payload.get("exponents") or [])
    md += _cooldown_section(payload.get("study"), payload)
    for e in entries:
        md += _fit_section(e, pngs.get(e.stem))
    md += _approaches_section(entries, frontiers)
    md += _groups_section(payload.get("groups"))
    if frontier is not None:
        md += ["## Compute-efficient frontier", "",
               f"Lower envelope of the runs' loss curves against measured C ({frontier.get('compute', 'nonembedding')}; "
               "Kaplan Fig. 1, Hoffmann approach 1); envelope points are neighbours on the same curves, so their "
               "bootstrap intervals understate the uncertainty.", ""]
        if "N_opt" in frontier:
            q = frontier["N_opt"]
            md.append(f"- N_opt(C) along the envelope: N ~ C^{q['exponent']:.3f} "
                      f"(95% [{_fmt(q['ci95']['exponent'][0])}, {_fmt(q['ci95']['exponent'][1])}]), "
                      f"from {q.get('n_sizes_on_frontier', '?')} model sizes on the envelope; paper 0.73.")
        md += ["", "![frontier](frontier.png)", ""]
    if batch is not None:
        md += ["## Critical batch size", ""]
        for k, v in batch.items():
            md.append(f"- {k}: {v}" if not isinstance(v, (list, dict)) else f"- {k}: {len(v)} entries (fits.json)")
        md.append("")
    md += _allocation_section(entries)
    if payload.get("positions"):
        from .positions import positions_section
        md += positions_section(payload["positions"], written.get("positions"))
    if payload.get("ablations"):
        from .ablations import sections
        md += sections(payload["ablations"])
    rp = os.path.join(out_dir, "report.md")
    atomic_write_text(rp, "\n".join(md))
    written["report.md"] = rp
    return written


def print_summary(entries: List[FitEntry], skipped: Optional[Dict[str, str]], out: Optional[str]) -> None:
    for e in entries:
        r = e.fit
        ps = ", ".join(f"{k}={v:.4g} " + (("(fixed)" if k in (r.get("fixed") or {}) else "")
                                          if r["ci95"].get(k) is None
                                          else f"[{r['ci95'][k][0]:.4g}, {r['ci95'][k][1]:.4g}]")
                       for k, v in r["params"].items())
        print(f"{e.stem:11s} n={r['n_points']:<5d} rmse_log={r['rmse_log']:.4f}  {ps}")
        for w in r["warnings"]:
            print(f"{'':11s} warning: {w}")
    for k, v in (skipped or {}).items():
        print(f"{k:11s} skipped: {v}")
    if out:
        print(f"report: {out}/report.md")
