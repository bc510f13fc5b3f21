"""The figures and report.md sections of the paper's other systems (presentation: reads the
numbers fitting/ablations.py computed, never fits them).

    from flopscale.fitting.ablation_report import sections, write_figures
    files = write_figures(abl, "report/")        # abl: ablations.Ablations; {key: path}
    md = sections(payload["ablations"])          # report.md lines, one section per analysis
"""

from __future__ import annotations

import math
import os
from typing import Dict, List

import numpy as np

from .laws import LAWS, PAPER, eq_d1_text, kaplan_lr, position_law
from .numbers import sig as _g
from .plotting import bootstrap_band, pyplot, save_figure
from .results import SCHEDULE_FIELDS, SERIES

ARCH_COLOUR = {"gpt": "C0", "lstm": "C3", "universal": "C2"}


def _plain(axis) -> None:
    """Plain numbers on a log axis (a toy study spans well under a decade of loss)."""
    from matplotlib.ticker import FormatStrFormatter
    axis.set_major_formatter(FormatStrFormatter("%.3g"))
    axis.set_minor_formatter(FormatStrFormatter("%.3g"))



def _ax_style(ax, title, xlabel, ylabel, logx=True, logy=False, plainx=False):
    if logx:
        ax.set_xscale("log", base=2 if plainx else 10)
        lo, hi = ax.get_xlim()
        if plainx or hi < 10 * lo:
            _plain(ax.xaxis)
            ax.tick_params(axis="x", which="minor", labelsize=6)
    if logy:
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        if hi < 10 * lo:
            _plain(ax.yaxis)
            ax.tick_params(axis="y", which="minor", labelsize=6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5)



def _plot_shape(ab, sec, path):

    plt = pyplot()
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (panel, key, xl, logx) in zip(axs, (("aspect", "aspect", "aspect ratio d_model / n_layer", True),
                                                ("ff", "ff_ratio", "feedforward ratio d_ff / d_model", True),
                                                ("heads", "n_heads", "attention heads n_heads", True))):
        varied = False
        for i, g in enumerate(sec["groups"]):
            ser = g["series"].get(panel)
            if not ser:
                continue
            rows = sorted((r for r in g["runs"] if r["run"] in ser["runs"]), key=lambda r: r[key])
            varied = True
            c = f"C{i % 10}"
            ax.plot([r[key] for r in rows], [r["increase_pct"] for r in rows], "o-", color=c, ms=4, lw=1.1,
                    label=f"{g['label']}: {len(rows)} shapes, spread {ser['spread_pct']:.2f}%")
            ref = next(r for r in rows if r["series"] == "reference")
            ax.scatter([ref[key]], [ref["increase_pct"]], s=50, facecolors="none", edgecolors=c, zorder=4)
        if not varied:
            ax.text(0.5, 0.5, "no group varies this alone", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8, color="0.4")
        _ax_style(ax, f"{SERIES[panel]} at fixed N (ring: the series' reference shape)", xl,
                  "loss increase over the group's best shape (%)", logx=logx, plainx=logx)
        ax.axhline(0, color="0.5", lw=0.6)
    fig.suptitle(f"Kaplan et al. Fig. 5 for these runs: N within {100 * sec['tolerance']:.0f}% per group", fontsize=10)
    save_figure(fig, path)



def _plot_arch(ab, sec, path):

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for a in sec["archs"]:
        c = ARCH_COLOUR.get(a, "C4")
        rs = [r for r in ab.recs if r.arch == a]
        a1.scatter([r.N for r in rs], [r.loss for r in rs], s=16, color=c, alpha=0.8, zorder=3, label=f"{a} runs")
        if a in ab.arch_boots:
            f, boot = ab.arch_boots[a]
            lo, hi = f["ranges"]["N"]
            grid = np.logspace(np.log10(lo), np.log10(hi * 10), 80)
            ci = f["ci95"].get("alpha_N")
            a1.plot(grid, LAWS["n"].predict(f["params"], N=grid), color=c, ls="--",
                    label=f"{a}: alpha_N {f['params']['alpha_N']:.3f}"
                          + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""))
            band = bootstrap_band(LAWS["n"], boot, LAWS["n"].params, N=grid)
            if band is not None:
                a1.fill_between(grid, band[0], band[1], color=c, alpha=0.12, lw=0)
        for r in rs:
            if len(r.curve[0]):
                a2.plot(r.curve[0], r.curve[1], color=c, lw=0.6, alpha=0.45)
        env = ab.arch_envelopes.get(a)
        if env is not None:
            a2.plot(env["C"], env["loss"], color=c, lw=2, label=f"{a}: best loss with compute <= C")
    g = sec.get("gap")
    if g:
        a1.axvline(g["N"], color="0.5", ls=":", lw=0.8, label=f"common N {g['N']:.3g} (gap in report.md)")
    L = [r.loss for r in ab.recs]
    a1.set_ylim(min(L) / 1.15, max(L) * 1.15)   # a loose fit's band would flatten the data
    _ax_style(a1, "Figs. 7, 17: L(N) per architecture (non-embedding N)", "N (non-embedding parameters)",
              "loss (nats/token)", logy=True)
    _ax_style(a2, "L(C) per architecture: curves and their lower envelope", "C (non-embedding FLOPs)",
              "loss (nats/token)", logy=True)
    save_figure(fig, path)



def _plot_positions(ab, sec, path):

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    chosen = {v["path"] for v in sec["per_arch"].values()}
    for f in ab.positions:
        if not f.get("N") or f["run"] in chosen:
            continue
        y = np.asarray(f["losses"], float)
        ax.plot(np.arange(1, y.size + 1), y, color=ARCH_COLOUR.get(f["arch"], "C4"), lw=0.5, alpha=0.25)
    for a, v in sec["per_arch"].items():
        f = next(f for f in ab.positions if f["run"] == v["path"])
        y = np.asarray(f["losses"], float)
        t = np.arange(1, y.size + 1)
        c = ARCH_COLOUR.get(a, "C4")
        ax.plot(t, y, color=c, lw=1.4, label=f"{a} N={v['N']:.3g}"
                + (f", alpha_t {v['alpha_t']:.3f}" if v.get("alpha_t") is not None else ""))
        if "params" in f:
            ax.plot(t, position_law(t.astype(float), **f["params"]), color=c, ls="--", lw=0.8)
    _ax_style(ax, "Figs. 7 right, 20: loss per position, archs at similar N (faint: other runs)",
              "token position t in the context", "validation loss (nats/token)")
    save_figure(fig, path)



def _plot_other(ab, sec, path):

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    xs = []
    for i, nm in enumerate(sec["names"]):
        e = sec["per_name"][nm]
        c = f"C{(i + 1) % 10}"
        x = np.array([p["loss"] for p in e["points"]])
        y = np.array([p["loss_other"] for p in e["points"]])
        xs += list(x)
        a1.scatter(x, y, s=16, color=c, zorder=3, label=f"{nm}: {len(x)} runs")
        if "fit" in e:
            f = e["fit"]
            g = np.linspace(x.min(), x.max(), 20)
            a1.plot(g, f["slope"] * g + f["offset"], color=c, lw=1.2,
                    label=f"{nm}: slope {f['slope']:.3f}, offset {f['offset']:+.3f}")
        N = np.array([p["N"] for p in e["points"]])
        a2.scatter(N, y, s=16, color=c, label=f"val_loss_{nm}")
    if xs:
        lim = np.array([min(xs), max(xs)])
        a1.plot(lim, lim, color="0.5", ls=":", lw=0.8, label="slope 1 through 0 (y = x)")
    N0 = np.array([r.N for r in ab.recs])
    a2.scatter(N0, [r.loss for r in ab.recs], s=16, color="C0", label="val_loss (training distribution)")
    _ax_style(a1, "Fig. 8 right: other distributions against the training one", "val_loss, training distribution",
              "val_loss on the other distribution", logx=False)
    _ax_style(a2, "Fig. 8 left: both against N", "N (non-embedding parameters)", "loss (nats/token)")
    save_figure(fig, path)



def _plot_lr(ab, sec, path):

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, s in enumerate(sec["scans"]):
        c = f"C{i % 10}"
        a1.plot(s["lrs"], s["losses"], "o-", color=c, ms=4, lw=1.1, label=s["label"])
        if "lr_best" in s:
            a1.scatter([s["lr_best"]], [s["loss_best"]], marker="*", s=90, color=c, edgecolors="k", zorder=4)
    good = [s for s in sec["scans"] if "lr_best" in s]
    for s in good:
        a2.scatter([s["N"]], [s["lr_best"]], s=40 if not s.get("edge") else 30, marker="*" if not s.get("edge") else "^",
                   color="C0", edgecolors="k", zorder=3)
    a2.scatter([], [], marker="*", s=40, color="C0", edgecolors="k", label="best lr per N (parabola in ln lr)")
    if any(s.get("edge") for s in good):
        a2.scatter([], [], marker="^", s=30, color="C0", edgecolors="k", label="at the scan's edge (a bound)")
    Ns = np.array([s["N"] for s in sec["scans"]])
    g = np.logspace(np.log10(Ns.min() / 2), np.log10(Ns.max() * 2), 50)
    a2.plot(g, kaplan_lr(g), color="0.4", ls=":", label="Kaplan eq. D.1 (another setup: compare the trend)")
    _ax_style(a1, "Fig. 21: loss against learning rate per model size (star: best)", "learning rate (peak)",
              "loss (nats/token)")
    _ax_style(a2, "best learning rate against N", "N (non-embedding parameters)", "learning rate", logy=True)
    save_figure(fig, path)



def _plot_schedule(ab, sec, path):

    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.4))
    by = {r.path: r for r in ab.recs}
    k = 0
    for gi, g in enumerate(sec["groups"]):
        for x in g["runs"]:
            st, lr = by[x["path"]].lr_curve  # as its lr_area was summed (ablations.schedule_analysis)
            a1.plot(st, lr, color=f"C{k % 10}", lw=1.1, ls=["-", "--", ":", "-."][gi % 4],
                    label=f"{x['label']} ({g['label']}): area {x['lr_area']:.3g}")
            k += 1
        labels = [x["label"] for x in g["runs"]]
        a2.bar([f"{lab}\n{g['label']}" if len(sec["groups"]) > 1 else lab for lab in labels],
               [x["final_loss"] for x in g["runs"]], color=[f"C{(k - len(labels) + j) % 10}" for j in range(len(labels))])
    fl = [x["final_loss"] for g in sec["groups"] for x in g["runs"]]
    a2.set_ylim(min(fl) - 0.05 * (max(fl) - min(fl) + 1e-3) - 0.02, max(fl) + 0.02)
    _ax_style(a1, "Fig. 22: learning-rate schedules (area = sum of lr over steps)", "step", "learning rate",
              logx=False)
    _ax_style(a2, "final loss per schedule", "schedule", "final val_loss (nats/token)", logx=False)
    a2.tick_params(axis="x", labelsize=6)
    save_figure(fig, path)



def _ci(ci, nd=3) -> str:
    return "" if not ci or None in ci else f" [{_g(ci[0], nd)}, {_g(ci[1], nd)}]"



def _img(sec, key) -> List[str]:
    return [f"![{key}]({sec['png']})", ""] if sec.get("png") else []



def _notes(sec) -> List[str]:
    return [f"- {n}." for n in sec.get("notes") or []] + ([""] if sec.get("notes") else [])



def _shape_section(sh: dict) -> List[str]:
    md: List[str] = []
    md += ["## Model shape at fixed N (Kaplan et al. Fig. 5)", "",
           f"Groups: {sh['rule']}. Loss increase = loss / (the group's best loss) - 1. Kaplan et al. find the loss "
           "varies only a few percent over a wide range of shapes at fixed N (aspect ratio 20-200 within about "
           "3%).", ""]
    if sh["groups"]:
        md += ["| group | shapes | N range | best shape (n_layer, d_model, n_heads, d_ff) | best loss | spread "
               f"(max - min increase) | spread by aspect / d_ff ratio / heads | N spread alone at alpha_N {PAPER['n']['alpha_N']:g} |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for g in sh["groups"]:
            b = g["best"]
            by = " / ".join(f"{g['series'][k]['spread_pct']:.2f}%" if k in g["series"] else "—" for k in SERIES)
            md.append(f"| {g['label']} | {g['n_shapes']} | {_g(g['N_range'][0])}-{_g(g['N_range'][1])} | "
                      f"{b['n_layer']}, {b['d_model']}, {b['n_heads']}, {b['d_ff']} (aspect {_g(b['aspect'])}) | "
                      f"{b['loss']:.4f} | {g['spread_pct']:.2f}% | {by} | {g['n_spread_effect_pct']:.2f}% |")
        md += ["", "Each group's shapes are split into series that vary one thing from a reference shape (the "
                   "figure's three panels; the reference sits in all three).", "",
               "| group | run | series | n_layer | d_model | n_heads | head dim | d_ff | aspect | d_ff/d_model | N | "
               "loss | increase |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for g in sh["groups"]:
            for r in g["runs"]:
                md.append(f"| {g['label']} | `{r['run']}` | {r['series']} | {r['n_layer']} | {r['d_model']} | "
                          f"{r['n_heads']} | {_g(r['d_head'])} | {r['d_ff']} | {_g(r['aspect'])} | "
                          f"{_g(r['ff_ratio'])} | {_g(r['N'])} | {r['loss']:.4f} | {r['increase_pct']:.2f}% |")
        md.append("")
        worst = max(sh["groups"], key=lambda g: g["spread_pct"])
        md += [f"Here the loss spreads by {worst['spread_pct']:.2f}% at most across shapes of one N "
               f"({worst['label']}); the groups' own N spread accounts for up to "
               f"{max(g['n_spread_effect_pct'] for g in sh['groups']):.2f}% of loss at the paper's alpha_N.", ""]
        for g in sh["groups"]:
            tried = sorted({r["n_runs"] for r in g["runs"]})
            if len(tried) > 1:
                md += [f"- {g['label']}: its shapes were run {tried[0]} to {tried[-1]} times (learning rates "
                       f"{', '.join(_g(v) for v in g['lrs'])}): the shapes tried more often are favoured.", ""]
    md += _notes(sh) + _img(sh, "shape")
    return md



def _arch_section(ar: dict) -> List[str]:
    md: List[str] = []
    md += ["## Architectures: Transformer, LSTM, universal Transformer (Kaplan et al. Figs. 7, 17)", "",
           "One L(N) fit per arch (law `n`, the lowest loss per N; 95% bootstrap intervals). Kaplan et al.: "
           "LSTMs match Transformers at small N but fall behind as N grows; a universal Transformer, reusing "
           "its weights, does slightly better per parameter and worse per FLOP. The fits above this section "
           "pool every arch.", "",
           "| arch | sizes | N range | alpha_N | 95% interval | rmse_log | C / 6ND (median) | note |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a in ar["archs"]:
        e = ar["per_arch"][a]
        md.append(f"| {a} | {e['n_sizes']} | {_g(e['N_range'][0])}-{_g(e['N_range'][1])} | "
                  f"{_g(e.get('alpha_N'), 4)} | {_ci(e.get('ci95'), 4).strip() or '—'} | {_g(e.get('rmse_log'))} | "
                  f"{_g(e.get('C_per_6ND'))} | {e.get('note') or '; '.join(e.get('warnings') or [])} |")
    md.append("")
    g = ar.get("gap")
    if g:
        ref = g["reference"]
        where = "inside every fitted range" if g["inside_all_ranges"] else "outside some fitted range: an extrapolation"
        md += [f"At N = {_g(g['N'])} ({where}), against {ref}: "
               + "; ".join(f"{a} {g['loss'][a]:.4f} nats ({g['gap'][a]:+.4f}, {g['gap_pct'][a]:+.2f}%)"
                           for a in g["loss"]) + ".", ""]
    cr = {a: e["C_per_6ND"] for a, e in ar["per_arch"].items() if e.get("C_per_6ND")}
    if "universal" in cr:
        md += [f"Compute and parameters part ways for the universal Transformer: its N counts the shared block "
               f"once, its C every application, so C / 6ND is {_g(cr['universal'])} (layers "
               f"{', '.join(map(str, ar['per_arch']['universal']['n_layer']))}) against "
               + ", ".join(f"{a} {_g(v)}" for a, v in cr.items() if a != "universal") + ".", ""]
    md += _notes(ar) + _img(ar, "arch")
    return md



def _positions_by_arch_section(pa: dict) -> List[str]:
    md: List[str] = []
    nctx = max(pa["n_ctx"])
    md += ["## Loss per position by architecture (Kaplan et al. Figs. 7 right, 20)", "",
           f"One run per arch at the nearest N to one another (N within a factor {pa['N_ratio']:.2f}); late drop = "
           f"mean loss over positions ({nctx // 4}, {nctx // 2}] minus the mean over ({nctx // 2}, {nctx}] (about "
           "0 for a plateau), with a rough standard error from neighbouring positions.", "",
           "| arch | run | N | alpha_t | alpha_t over all its runs (median, range) | late drop (nats) |",
           "| --- | --- | --- | --- | --- | --- |"]
    for a, v in pa["per_arch"].items():
        al = v.get("alpha_t_all")
        md.append(f"| {a} | `{v['run']}` | {_g(v['N'])} | {_g(v.get('alpha_t'))} | "
                  + (f"{_g(al['median'])} ({_g(al['min'])}-{_g(al['max'])}, {al['n_runs']} "
                     f"run{'s' if al['n_runs'] != 1 else ''})" if al else "—")
                  + f" | {v['late_drop']:+.4f} ± {_g(v['late_drop_se'], 2)} |")
    md.append("")
    md += ["Kaplan et al.: Transformers keep improving with position, the LSTM's per-token loss plateaus after "
           "about 100 tokens. "
           + (f"These contexts are {nctx} tokens, shorter than that, so the plateau itself cannot show; what "
              "can is whether the LSTM gains less from the later positions: " if nctx < 100 else "Here: ")
           + _position_verdict(pa) + ".", ""]
    md += _img(pa, "positions_by_arch")
    return md



def _other_data_section(od: dict) -> List[str]:
    md: List[str] = []
    md += ["## Other data distributions (Kaplan et al. Fig. 8)", "",
           "Each run's loss on another corpus (metrics.jsonl `val_loss_NAME`, at the evaluation its val_loss point "
           "comes from) against its loss on the training distribution: a least-squares line y = slope x + offset "
           "(t intervals, 95%) and the mean gap y - x (slope held at 1). Kaplan et al. find the transfer a roughly "
           "constant offset: slope about 1.", "",
           "| distribution | runs | slope | 95% interval | offset (nats) | 95% interval | mean gap y - x | 95% "
           "interval | rmse |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for nm in od["names"]:
        e = od["per_name"][nm]
        f = e.get("fit")
        if f:
            md.append(f"| {nm} | {e['n_runs']} | {f['slope']:.3f} | {_ci(f['ci95']['slope']).strip()} | "
                      f"{f['offset']:+.3f} | {_ci(f['ci95']['offset']).strip()} | {f['gap_mean']:+.4f} | "
                      f"{_ci(f['gap_ci95'], 4).strip()} | {f['rmse']:.3g} |")
        else:
            notes.append(f"- {nm}: {e['note']}; no fit.")
    md += [""] + (notes + [""] if notes else []) + _img(od, "other_data")
    return md



def _lr_section(lr: dict) -> List[str]:
    md: List[str] = []
    md += ["## Learning rate (Kaplan et al. Figs. 21-22, eq. D.1)", "",
           "Runs identical but for the peak lr, one scan per model. Best lr: the vertex of a parabola in ln lr "
           "through the lowest loss and its two neighbours (the minimum itself when it sits at the scan's edge, "
           f"then only a bound). Eq. D.1, {eq_d1_text()}, is Kaplan et al.'s fit for their "
           "setup (batch, schedule, data): compare the trend with N, not the level.", "",
           "| scan | learning rates | lowest loss at | best lr | how | eq. D.1 at this N | best / D.1 |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in lr["scans"]:
        if "lr_best" in s:
            how = s["method"] + (f": the {s['edge']} lr tried, a bound" if s.get("edge") else "")
            md.append(f"| {s['label']} | {', '.join(_g(v) for v in s['lrs'])} | {_g(s['lr_min'])} | "
                      f"{_g(s['lr_best'])} | {how} | {_g(s['kaplan_D1'])} | "
                      f"{_g(s['lr_best'] / s['kaplan_D1']) if s['kaplan_D1'] > 0 else '—'} |")
        else:
            md.append(f"| {s['label']} | {', '.join(_g(v) for v in s['lrs'])} | — | — | {s['note']} | — | — |")
    md.append("")
    t = lr.get("trend")
    if t:
        md += [f"Trend over {t['n_sizes']} sizes (N {_g(t['N_range'][0])}-{_g(t['N_range'][1])}): best lr ~ "
               f"N^{t['exponent']:.3f}, a factor {t['per_decade']:.3g} per decade of N; eq. D.1 over the same N: "
               + (f"a factor {t['kaplan_per_decade']:.3g} per decade." if t.get("kaplan_per_decade") else
                  "not positive there."), ""]
    md += _notes(lr) + _img(lr, "lr")
    return md



def _schedule_section(sc: dict) -> List[str]:
    md: List[str] = []
    md += ["## Learning-rate schedules (Kaplan et al. Fig. 22)", "",
           "Runs identical but for the schedule fields (" + ", ".join(SCHEDULE_FIELDS) + "). Area = the sum of the "
           "learning rate over the steps. Kaplan et al. find that schedules of equal area end within a small range "
           "of loss, whatever their shape.", "",
           "| group | schedule | run | peak lr | lr area | final loss | best loss | lr curve from |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for g in sc["groups"]:
        for x in g["runs"]:
            tried = f" ({x['picked']}, of {x['n_runs']} tried)" if x["n_runs"] > 1 else ""
            md.append(f"| {g['label']} | {x['label']} | `{x['run']}` | {_g(x['lr_peak'])}{tried} | "
                      f"{_g(x['lr_area'])} | {x['final_loss']:.4f} | {x['loss']:.4f} | {x['lr_source']} |")
    md.append("")
    for g in sc["groups"]:
        md.append(f"- {g['label']}: final losses spread by {g['spread']:.4f} nats ({g['spread_pct']:.2f}%) across "
                  f"{len(g['runs'])} schedules, best {g['best']}; lr areas "
                  + (f"within a factor {g['area_ratio']:.3f} of one another." if g.get("area_ratio") else "unknown."))
    md += [""] + _img(sc, "schedule")
    return md



# the report's sections, in this order, each from its analysis's payload
SECTION_WRITERS = (("shape", _shape_section), ("arch", _arch_section),
                   ("positions_by_arch", _positions_by_arch_section), ("other_data", _other_data_section),
                   ("lr", _lr_section), ("schedule", _schedule_section))



def sections(ab: dict) -> List[str]:
    md: List[str] = []
    for key, section in SECTION_WRITERS:
        if ab.get(key):
            md += section(ab[key])
    return md



def _position_verdict(pa: dict) -> str:
    per = pa["per_arch"]
    bits = [f"{a} {v['late_drop']:+.3f} ± {_g(v['late_drop_se'], 2)} nats" for a, v in per.items()]
    if "lstm" in per and any(a != "lstm" for a in per):
        l = per["lstm"]
        others = [v for a, v in per.items() if a != "lstm"]
        se = max([l["late_drop_se"]] + [v["late_drop_se"] for v in others])
        gap = min(v["late_drop"] for v in others) - l["late_drop"]
        if math.isfinite(se) and gap > 2 * se:
            verdict = "the LSTM gains less from late positions than the Transformers, as the paper's plateau implies"
        elif math.isfinite(se) and gap < -2 * se:
            verdict = "the LSTM gains more from late positions here, unlike the paper"
        else:
            verdict = "the difference is within the noise of these per-position losses"
        return "late drops " + ", ".join(bits) + f": {verdict}"
    return "late drops " + ", ".join(bits)


def write_figures(abl, out_dir: str) -> Dict[str, str]:
    """Draw the PNG each analysis names under "png" (set by ablations.ablations); returns {key: path}."""
    files = {}
    for key, draw in (("shape", _plot_shape), ("arch", _plot_arch), ("positions_by_arch", _plot_positions),
                      ("other_data", _plot_other), ("lr", _plot_lr), ("schedule", _plot_schedule)):
        sec = abl.payload.get(key)
        if sec and sec.get("png"):
            path = os.path.join(out_dir, sec["png"])
            draw(abl, sec, path)
            files[key] = path
    return files
