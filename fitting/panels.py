"""The report's six panels (one PNG each) and overview.png, which sets them side by side like
Kaplan et al.'s Figure 1 (plus Figure 6's embedding view and Hoffmann et al.'s three approaches).

    from flopscale.fitting.panels import write_panels
    files = write_panels("report/", entries, payload, study)   # {panel name: path}

1 L vs C: every run's curve (thin, coloured by N), the frontier (best loss with compute <= C,
  never rising) and the fitted L(C). 2 L vs D: curves against tokens, each run's point, the `d`
  law and, where the runs vary D at fixed N, L(N, D) per N. 3 L vs N beside L vs N_total (all
  parameters). 4 N_opt(C) by approaches 1, 2, 3 under each compute convention. 5 B_crit(L).
  6 the isoFLOP slices (figures.plot_isoflop). Cooldown branches (config.json train.init_from)
  are drawn dashed and their points as diamonds. Every file goes through flopscale.fileio.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from .laws import LAWS, PAPER, PAPER_ALLOCATION_HOFFMANN
from .numbers import fmt, fmt_short_sci
from .figures import iso_slices_axes, plot_isoflop
from .plotting import bootstrap_band, pyplot, save_figure
from .results import PANEL_FILES, PANELS, approach3_rows, frontiers_by_compute

COOL = "D"       # marker of a cooldown branch's point
RUN = "o"
CONV_LABEL = {"nonembedding": "non-embedding FLOPs (Kaplan's C)", "all": "all FLOPs (embeddings included)"}


class _Colours:
    """One colour per model size, by log N (viridis), shared by every panel."""

    def __init__(self, Ns):
        import matplotlib
        Ns = [n for n in Ns if n]
        lo, hi = (min(Ns), max(Ns)) if Ns else (1.0, 10.0)
        if hi <= lo:
            hi = lo * 10
        self.norm = matplotlib.colors.LogNorm(lo, hi)
        self.cmap = matplotlib.colormaps["viridis"]

    def __call__(self, N):
        return self.cmap(0.9 * self.norm(N))

    def bar(self, fig, ax, label="N (non-embedding parameters)"):
        import matplotlib
        sm = matplotlib.cm.ScalarMappable(norm=self.norm, cmap=matplotlib.colors.ListedColormap(
            self.cmap(np.linspace(0, 0.9, 256))))
        cb = fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.05)
        cb.set_label(label, fontsize=7)
        cb.ax.tick_params(labelsize=6)


def _empty(ax, title: str, why: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes, color="0.35")
    ax.set_xticks([]); ax.set_yticks([])


def _fmt_ci(v, ci) -> str:
    if ci is None or any(x is None for x in ci):
        return fmt(v, ".3f")
    return f"{fmt(v, '.3f')} [{fmt(ci[0], '.3f')}, {fmt(ci[1], '.3f')}]"


def _style(ax, title: str, xlabel: str, ylabel: str, logy: bool = True) -> None:
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8); ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", alpha=0.25)
    h, _ = ax.get_legend_handles_labels()
    if h:
        ax.legend(fontsize=6.5, loc="best")


# ------------------------------------------------------------------------------------------------
# 1 L vs C
# ------------------------------------------------------------------------------------------------

def draw_loss_vs_compute(ax, study, frontier: Optional[dict], c_entry, col: _Colours, conv: str = "nonembedding"):
    title = f"1  L(C): curves, frontier, fit (C = {conv})"
    rows, curves = study.get("runs", []), study.get("curves", [])
    have = [(r, c[conv]) for r, c in zip(rows, curves) if conv in c]
    if not have and not frontier:
        pts = [(r["C"], r["loss"], r) for r in rows if r.get("C")]
        if not pts:
            return _empty(ax, title, "no compute: the runs have no curves and the table no C column")
        for C, L, r in pts:
            ax.scatter(C, L, s=14, color=col(r["N"]) if r.get("N") else "C0", marker=RUN)
    for r, (C, L) in have:
        cool = bool(r.get("cooldown"))
        ax.plot(C, L, color=col(r["N"]), lw=0.8 if not cool else 1.1, ls="--" if cool else "-", alpha=0.8)
        if cool:
            ax.scatter([C[-1]], [L[-1]], marker=COOL, s=22, color=col(r["N"]), edgecolors="k", lw=0.5, zorder=4)
    if any(r.get("cooldown") for r, _ in have):
        ax.scatter([], [], marker=COOL, s=22, color="0.6", edgecolors="k", lw=0.5, label="cooldown branch (dashed)")
    if frontier:
        env = frontier["envelope"]
        ax.plot(env["C"], env["loss"], color="k", lw=2.2, label="frontier: best loss with compute <= C", zorder=3)
    if c_entry is not None:
        p, fit = c_entry.fit["params"], c_entry.fit
        C = np.asarray(c_entry.cols["C"])
        grid = np.logspace(np.log10(C.min()), np.log10(C.max() * 10), 100)
        ax.plot(grid, LAWS["c"].predict(p, C=grid), color="C3", ls="--", lw=1.4, zorder=4,
                label=f"fit L = (C_c/C)^alpha_C, alpha_C = {_fmt_ci(p['alpha_C'], fit['ci95'].get('alpha_C'))}")
        band = bootstrap_band(LAWS["c"], c_entry.boot, LAWS["c"].params, C=grid)
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="C3", alpha=0.15, lw=0)
    _style(ax, title, f"C ({CONV_LABEL[conv]})", "loss (nats/token)")


# ------------------------------------------------------------------------------------------------
# 2 L vs D
# ------------------------------------------------------------------------------------------------

def draw_loss_vs_data(ax, study, entries: Dict, col: _Colours):
    title = "2  L(D): curves against tokens, runs, L(D) and L(N, D)"
    rows, curves = study.get("runs", []), study.get("curves", [])
    if not any(r.get("D") for r in rows):
        return _empty(ax, title, "no D: the table has no D column")
    for r, c in zip(rows, curves):
        if "tokens" in c:
            ax.plot(c["tokens"][0], c["tokens"][1], color=col(r["N"]), lw=0.6, alpha=0.45,
                    ls="--" if r.get("cooldown") else "-")
    for r in rows:
        if r.get("D"):
            ax.scatter(r["D"], r["loss"], s=18 if not r.get("cooldown") else 26, color=col(r["N"]) if r.get("N") else "C0",
                       marker=COOL if r.get("cooldown") else RUN, edgecolors="k", lw=0.4, zorder=4)
    ax.scatter([], [], marker=RUN, s=18, color="0.6", edgecolors="k", lw=0.4, label="run: its best loss, tokens seen")
    if any(r.get("cooldown") for r in rows):
        ax.scatter([], [], marker=COOL, s=26, color="0.6", edgecolors="k", lw=0.4, label="cooldown branch")
    d = entries.get("d")
    Ds = np.array([r["D"] for r in rows if r.get("D")])
    if d is not None:
        grid = np.logspace(np.log10(Ds.min()), np.log10(Ds.max() * 10), 100)
        ax.plot(grid, LAWS["d"].predict(d.fit["params"], D=grid), color="C3", ls="--", lw=1.4,
                label=f"fit L(D), alpha_D = {_fmt_ci(d.fit['params']['alpha_D'], d.fit['ci95'].get('alpha_D'))}")
    two = entries.get("chinchilla") or entries.get("nd")
    several = study.get("summary", {}).get("sizes_with_several_D", 0)
    if two is not None and several:
        byN: Dict[float, list] = {}
        for r in rows:
            if r.get("N") and r.get("D"):
                byN.setdefault(r["N"], []).append(r["D"])
        grid = np.logspace(np.log10(Ds.min()), np.log10(Ds.max() * 10), 100)
        law = LAWS[two.fit["law"]]
        first = True
        for N, ds in sorted(byN.items()):
            if len(set(np.round(np.log(ds), 3))) < 2:
                continue
            ax.plot(grid, law.predict(two.fit["params"], N=np.full_like(grid, N), D=grid), color=col(N), lw=1.2,
                    ls=":", label=(f"L(N, D) per N ({'Chinchilla' if two.fit['law'] == 'chinchilla' else 'Kaplan nd'})"
                                   if first else None))
            first = False
    elif two is None:
        ax.text(0.02, 0.02, "no L(N, D) fit (needs several D per N)", transform=ax.transAxes, fontsize=6.5, color="0.4")
    _style(ax, title, "D (tokens seen)", "loss (nats/token)")


# ------------------------------------------------------------------------------------------------
# 3 L vs N, beside L vs N_total (Kaplan Fig. 6)
# ------------------------------------------------------------------------------------------------

def draw_loss_vs_params(ax, study, entry, key: str, title: str, xlabel: str, other=None):
    rows = [r for r in study.get("runs", []) if r.get(key)]
    if not rows:
        return _empty(ax, title, f"no {key}: " + ("config.json holds no n_params_total" if key == "N_total"
                                                  else "no N"))
    layers = sorted({r["n_layer"] for r in rows if r.get("n_layer") is not None})
    for r in rows:
        c = f"C{layers.index(r['n_layer']) % 10}" if r.get("n_layer") in layers else "C0"
        ax.scatter(r[key], r["loss"], s=16 if not r.get("cooldown") else 26, color=c, alpha=0.85,
                   marker=COOL if r.get("cooldown") else RUN, edgecolors="k", lw=0.3, zorder=3)
    for i, nl in enumerate(layers):
        ax.scatter([], [], marker=RUN, s=16, color=f"C{i % 10}", label=f"{nl} layer{'s' if nl != 1 else ''}")
    if any(r.get("cooldown") for r in rows):
        ax.scatter([], [], marker=COOL, s=26, color="0.6", edgecolors="k", lw=0.3, label="cooldown branch")
    if entry is not None:
        f = entry.fit
        x = np.asarray(entry.cols["N"])
        src = entry.source or ""
        which = "the runs at one fixed D" if "fixed D" in src else "the lowest loss per N"
        ax.scatter(x, entry.cols["loss"], s=60, facecolors="none", edgecolors="k", lw=0.9, zorder=4,
                   label=f"fitted: {which}")
        grid = np.logspace(np.log10(x.min()), np.log10(x.max() * 10), 100)
        rm = f"rmse_log {f['rmse_log']:.3g}"
        if other is not None:
            rm += f" (vs {other.fit['rmse_log']:.3g} non-embedding)" if key == "N_total" else ""
        ax.plot(grid, LAWS["n"].predict(f["params"], N=grid), color="k", ls="--", lw=1.3,
                label=f"fit: alpha_N = {_fmt_ci(f['params']['alpha_N'], f['ci95'].get('alpha_N'))}")
        ax.plot([], [], " ", label=rm)
        band = bootstrap_band(LAWS["n"], entry.boot, LAWS["n"].params, N=grid)
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color="k", alpha=0.1, lw=0)
    _style(ax, title, xlabel, "loss (nats/token)")


# ------------------------------------------------------------------------------------------------
# 4 N_opt(C) by approaches 1, 2, 3
# ------------------------------------------------------------------------------------------------

def draw_allocation(ax, conv: str, frontier: Optional[dict], iso, chin, summary, a3: Optional[dict] = None):
    title = f"4  N_opt(C), approaches 1, 2, 3 (C = {conv})"
    xs, ys = [], []
    if frontier and "N_opt" in frontier:
        env = frontier["envelope"]
        C, N = np.array(env["C"]), np.array(env["N_at_C"] if "N_at_C" in env else env["N"])
        q = frontier["N_opt"]
        ax.scatter(C, N, s=8, color="C0", alpha=0.5)
        lo, hi = q["ci95"]["exponent"]
        bad = not (lo is not None and hi is not None and hi - lo <= abs(q["exponent"]))
        ax.plot(C, q["coef"] * C ** q["exponent"], color="C0", ls=":" if bad else "-",
                label=f"1 frontier: a = {_fmt_ci(q['exponent'], q['ci95']['exponent'])}"
                      + (" (not identified)" if bad else ""))
        xs += list(C); ys += list(N)
    if iso is not None:
        good = [s for s in iso.fit["slices"] if "N_opt" in s]
        if good:
            C = np.array([s["C"] for s in good]); N = np.array([s["N_opt"] for s in good])
            p = iso.fit["params"]
            ax.scatter(C, N, marker="*", s=80, color="C1", edgecolors="k", lw=0.4, zorder=4)
            g = np.logspace(np.log10(C.min()), np.log10(C.max()), 50)
            ax.plot(g, p["k_N"] * g ** p["a"], color="C1",
                    label=f"2 isoFLOP minima: a = {_fmt_ci(p['a'], iso.fit['ci95'].get('a'))}")
            xs += list(C); ys += list(N)
    if iso is None:
        ax.text(0.98, 0.02, f"approach 2: no isoFLOP fit with C = {conv} (report.md says why)", ha="right",
                transform=ax.transAxes, fontsize=6.5, color="0.4")
    if chin is not None and chin.fit.get("allocation") and xs:
        a3 = a3 or {}
        al = chin.fit["allocation"]
        g = np.logspace(np.log10(min(xs)), np.log10(max(xs)), 50)
        conv3 = conv if conv in a3 else "6ND"
        gm = (summary or {}).get("c_vs_6ND", {}).get(conv)
        C6 = (g / gm["coef"]) ** (1 / gm["gamma"]) if (gm and conv3 == conv) else g
        ax.plot(g, al["G"] * (C6 / 6) ** al["a"], color="C2",
                label=f"3 L(N, D) fit: a = {_fmt_ci(a3[conv3]['value'], a3[conv3]['ci95'])}"
                      + (" (C = 6ND, converted)" if conv3 == conv else " (C = 6ND)"))
    if not xs:
        return _empty(ax, title, "no frontier or isoFLOP slices under this convention")
    cx, cy = np.exp(np.mean(np.log(xs))), np.exp(np.mean(np.log(ys)))
    g = np.logspace(np.log10(min(xs)), np.log10(max(xs)), 20)
    H = PAPER_ALLOCATION_HOFFMANN
    for a, ls, lab in ((H["Kaplan et al."]["a"], ":", f"Kaplan slope {H['Kaplan et al.']['a']:.2f}"),
                       (H["approach 2"]["a"], "-.", "Chinchilla slope ~0.5")):
        ax.plot(g, cy * (g / cx) ** a, color="0.55", ls=ls, lw=0.9, label=lab + " (through the data's centre)")
    _style(ax, title, f"C ({CONV_LABEL[conv]})", "N_opt (non-embedding parameters)")


# ------------------------------------------------------------------------------------------------
# 5 B_crit(L)
# ------------------------------------------------------------------------------------------------

def draw_bcrit(ax, entry, why: str = ""):
    title = "5  B_crit(L) from the noise scale"
    if entry is None:
        return _empty(ax, title, why or "no bcrit fit")
    f, cols = entry.fit, entry.cols
    ax.scatter(cols["loss"], cols["B"], s=3, alpha=0.25, color="C0", label=f"{f['n_points']} estimates")
    x = np.asarray(cols["loss"])
    grid = np.exp(np.linspace(np.log(x.min() / 1.3), np.log(x.max()), 100))
    ax.plot(grid, LAWS["bcrit"].predict(f["params"], loss=grid), color="C3", lw=1.5,
            label=f"fit: alpha_B = {_fmt_ci(f['params']['alpha_B'], f['ci95'].get('alpha_B'))}, "
                  f"B* = {f['params']['B_star']:.3g}")
    ax.plot(grid, LAWS["bcrit"].predict(PAPER["bcrit"], loss=grid), color="0.5", ls=":",
            label=f"Kaplan: B* {fmt_short_sci(PAPER['bcrit']['B_star'])}, alpha_B {PAPER['bcrit']['alpha_B']:g}")
    _style(ax, title, "loss (nats/token)", "B_crit (tokens)")
    from matplotlib.ticker import NullFormatter
    ax.xaxis.set_minor_formatter(NullFormatter())  # a loss range under a decade: minor labels collide


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------

def write_panels(out_dir: str, entries: List, payload: dict, study: Optional[dict], skipped=None) -> Dict[str, str]:
    """Write the six panel PNGs and overview.png into out_dir; returns {name: path}."""

    plt = pyplot()
    study = study or {"runs": [], "curves": [], "summary": {}}
    by = {e.stem: e for e in entries}
    summary = study.get("summary") or {}
    fr = frontiers_by_compute(payload)
    col = _Colours([r.get("N") for r in study.get("runs", [])])
    skipped = skipped or payload.get("skipped") or {}
    n_e, t_e = by.get("n"), by.get("n_total")
    c_by = {e.fit.get("compute", "nonembedding"): e for e in entries if e.fit["law"] == "c"}
    iso_by = {e.fit.get("compute", "nonembedding"): e for e in entries if e.fit["law"] == "isoflop"}
    chin = by.get("chinchilla")
    bc = by.get("bcrit") or by.get("bcrit_se")
    main = payload.get("frontier", {}).get("compute", "nonembedding") if payload.get("frontier") else "nonembedding"
    convs = [main] + [c for c in ("nonembedding", "all") if c != main]
    bc_why = "no bcrit fit: " + skipped.get("bcrit", "no grad_noise_scale logged")
    iso_why = "no isoFLOP slices: " + skipped.get("isoflop", "no isoflop fit")

    def p1(ax): draw_loss_vs_compute(ax, study, fr.get(main), c_by.get(main), col, main)
    def p2(ax): draw_loss_vs_data(ax, study, by, col)
    def p3a(ax): draw_loss_vs_params(ax, study, n_e, "N", "3  L(N), non-embedding parameters", "N (non-embedding)")
    def p3b(ax): draw_loss_vs_params(ax, study, t_e, "N_total", "3  L(N_total), embeddings included (Kaplan Fig. 6)",
                                     "N_total (all parameters)", other=n_e)
    a3 = approach3_rows(payload, chin.stem) if chin is not None else {}
    def p4(ax, conv): draw_allocation(ax, conv, fr.get(conv), iso_by.get(conv), chin, summary, a3)
    def p5(ax): draw_bcrit(ax, bc, bc_why)
    def p6(ax):
        e = iso_by.get(main)
        if e is None:
            return _empty(ax, "6  isoFLOP slices", iso_why)
        iso_slices_axes(ax, e)
        ax.set_title(f"6  isoFLOP slices (C = {main}); star: each slice's minimum", fontsize=9)

    out = {}
    layouts = {"1": [p1], "2": [p2], "3": [p3a, p3b], "4": [lambda a, c=c: p4(a, c) for c in convs], "5": [p5]}
    for k, fns in layouts.items():
        fig, axs = plt.subplots(1, len(fns), figsize=(6.4 * len(fns), 4.8), squeeze=False)
        for fn, ax in zip(fns, axs[0]):
            fn(ax)
        if k in ("1", "2"):
            col.bar(fig, axs[0][-1])
        path = os.path.join(out_dir, PANELS[k])
        save_figure(fig, path)
        out[f"panel{k}"] = path
    path = os.path.join(out_dir, PANELS["6"])
    if iso_by.get(main) is not None:
        plot_isoflop(iso_by[main], path)
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        p6(ax)
        save_figure(fig, path)
    out["panel6"] = path

    fig, axs = plt.subplots(2, 4, figsize=(24, 10.5))
    p1(axs[0][0]); p2(axs[0][1]); p3a(axs[0][2]); p3b(axs[0][3])
    p4(axs[1][0], convs[0]); p4(axs[1][1], convs[1]); p5(axs[1][2]); p6(axs[1][3])
    col.bar(fig, axs[0][1])
    fig.suptitle(_suptitle(summary), fontsize=11)
    path = os.path.join(out_dir, PANEL_FILES["overview"])
    save_figure(fig, path)
    out["overview"] = path
    return out


def _suptitle(s: dict) -> str:
    bits = [f"{s.get('n_runs', 0)} runs"]
    if s.get("N_range"):
        bits.append(f"N {s['N_range'][0]:.2g}-{s['N_range'][1]:.2g} ({s['N_decades']:.1f} decades)")
    if s.get("C_range"):
        bits.append(f"C {s['C_range'][0]:.2g}-{s['C_range'][1]:.2g} FLOPs")
    sh = s.get("nonembedding_share")
    if sh:
        bits.append(f"non-embedding share of compute {100 * sh['min']:.0f}-{100 * sh['max']:.0f}%")
    if s.get("cooldowns"):
        bits.append(f"{len(s['cooldowns'])} cooldown branch(es), dashed / diamonds")
    return "flopscale scaling study: " + ", ".join(bits)
