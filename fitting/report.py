"""The markdown report and the report directory (presentation: reads results, never fits).

    from flopscale.fitting.estimator import fit
    from flopscale.fitting.results import FitEntry, FitResults
    from flopscale.fitting.study import build_payload
    from flopscale.fitting.report import write_report
    res, boot = fit("n", cols, return_boot=True)
    entries = (FitEntry(res, boot, cols, source="csv"),)
    write_report("report/", FitResults(build_payload(entries), entries))
    # report/fits.json, report/n.png, the panels, report/report.md

Every file goes through flopscale.fileio's atomic writes (PNGs via plotting.save_figure). The
figures are figures.py's (one per fit, the frontier, the isoFLOP slices), panels.py's and the
ablations'; tables give C in FLOPs and PF-days (8.64e19 FLOPs).
"""

from __future__ import annotations

import math
import os
import re
from typing import Dict, List, Optional

from flopscale.fileio import atomic_write_text

from .ablation_report import sections, write_figures as write_ablation_figures
from .figures import plot_entry, plot_frontier, plot_positions
from .laws import (HUBER_DELTA, PAPER, PAPER_ALLOCATION_EMPIRICAL, PAPER_ALLOCATION_HOFFMANN, PAPER_SOURCES, PF_DAY,
                   POSITION_FORMULA)
from .numbers import fmt, fmt_short_sci
from .outlook_report import outlook_section
from .panels import write_panels
from .results import PANEL_FILES, FitEntry, FitResults, frontier_entries, frontiers_by_compute

UNITS = {"k_N": "params / FLOP^a", "k_D": "tokens / FLOP^b", "R_D_star": "repetitions", "R_N_star": "excess-parameter ratio",
         "N_c": "params", "D_c": "tokens", "C_c": "FLOPs", "S_c": "steps", "B_star": "tokens",
         "E": "nats/token", "A": "nats/token * N^alpha", "B": "nats/token * D^beta"}


# ------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------

def _fmt(v) -> str:
    return fmt(v, ".4g", sci=True)


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


def _allocation_section(payload: dict) -> List[str]:
    """fits.json's "allocation" (from the ns and bcrit fits) beside "allocation_paper" (the paper's
    constants, derived and measured), as study.build_payload computed them."""
    pa, fitted = payload["allocation_paper"]["derived"], payload.get("allocation")
    out = ["## Compute-efficient allocation", "",
           "Derived from alpha_N, alpha_S (law `ns`) and alpha_B (law `bcrit`): 1/alpha_C_min = "
           "1/alpha_S + 1/alpha_B + 1/alpha_N, N ~ C^(alpha_C/alpha_N), B ~ C^(alpha_C/alpha_B), "
           "S ~ C^(alpha_C/alpha_S), D = B S. The paper is not self-consistent here: its measured "
           "exponents (last column) differ from those its own constants imply (middle column).", "",
           "| exponent of C_min | derived from these fits | derived from the paper's constants | paper, empirical |",
           "| --- | --- | --- | --- |"]
    emp = dict(payload["allocation_paper"]["empirical"], alpha_C_min=PAPER["c"]["alpha_C"])  # eq. (1.3)
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
           "N_opt = G (C/6)^a. Hoffmann et al. 2022 (Table 2) found a = "
           + ", ".join(f"{PAPER_ALLOCATION_HOFFMANN[f'approach {i}']['a']:.2f}" for i in (1, 2, 3))
           + f" by approaches 1, 2, 3; Kaplan et al. {PAPER_ALLOCATION_EMPIRICAL['N']:.2f}.", "",
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
           "| quantity | range |", "| --- | --- |",
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
    envs = frontier_entries(payload)
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
    return out + ["", "Reference numbers:", ""] + [f"- {k}: {v}" for k, v in PAPER_SOURCES.items()] + [""]


def _caveat_section(lines: Dict[str, str]) -> List[str]:
    if not lines:
        return []
    return (["## What this study can and cannot tell", "", "One line per fit, computed from its points and intervals.",
             ""] + [f"- `{k}`: {v}." for k, v in lines.items()] + [""])


def _deltas_text(entries: List[FitEntry]) -> str:
    """The Huber delta(s) the fits ran with, read from each fit's loss_fn ("huber(delta=0.001) ...")
    and written as 1e-3; the default's when no entry is a Huber fit (an isoflop-only report)."""
    found = sorted({float(m.group(1)) for e in entries
                    for m in [re.match(r"huber\(delta=([^)]+)\)", str(e.fit.get("loss_fn", "")))] if m})
    return " or ".join(fmt_short_sci(d) for d in (found or [HUBER_DELTA]))


def write_report(out_dir: str, results: FitResults) -> Dict[str, str]:
    """Write fits.json (results.to_json()), one PNG per fit, the six panels and overview.png
    (fitting/panels.py) and report.md into out_dir; returns {name: path}. The ablations' figures and
    sections (payload["ablations"]) come last. Reads the results only: nothing is fitted, nothing changed."""
    entries, payload = list(results.entries), results.payload
    os.makedirs(out_dir, exist_ok=True)
    written, pngs = draw_figures(out_dir, entries, payload, results.frontier_curves, results.study, results.ablations)
    fj = os.path.join(out_dir, "fits.json")
    atomic_write_text(fj, results.to_json())
    written["fits.json"] = fj
    rp = os.path.join(out_dir, "report.md")
    atomic_write_text(rp, "\n".join(markdown(entries, payload, pngs, written.get("positions")) + outlook_section(payload)))
    written["report.md"] = rp
    return written


def draw_figures(out_dir: str, entries: List[FitEntry], payload: dict, frontier_curves, study, ablations):
    """Every PNG of the report; returns ({name: path}, {fit stem: path})."""
    written: Dict[str, str] = {}
    pngs = {}
    for e in entries:
        pngs[e.stem] = plot_entry(e, os.path.join(out_dir, f"{e.stem}.png"))
        written[e.stem] = pngs[e.stem]
    frontier = payload.get("frontier")
    if frontier is not None:
        written["frontier"] = plot_frontier(frontier, frontier_curves or [], os.path.join(out_dir, "frontier.png"))
    written.update(write_panels(out_dir, entries, payload, study))
    if payload.get("positions"):
        written["positions"] = plot_positions(payload["positions"], os.path.join(out_dir, "positions.png"))
    if ablations is not None and payload.get("ablations"):
        written.update(write_ablation_figures(ablations, out_dir))  # the PNGs payload["ablations"] names
    return written, pngs


def markdown(entries: List[FitEntry], payload: dict, pngs: Dict[str, str], positions_png=None) -> List[str]:
    """report.md's lines, section by section, from the results (pngs: each fit's figure)."""
    md = _header_section(entries, payload)
    md += _study_section(payload.get("study"))
    md += _glance_section()
    md += _caveat_section(payload.get("caveats"))
    md += _exponent_section(payload.get("exponents") or [])
    md += _cooldown_section(payload.get("study"), payload)
    for e in entries:
        md += _fit_section(e, pngs.get(e.stem))
    md += _approaches_section(entries, frontiers_by_compute(payload))
    md += _groups_section(payload.get("groups"))
    md += _frontier_section(payload.get("frontier"))
    md += _batch_section(payload.get("batch"))
    md += _allocation_section(payload)
    if payload.get("positions"):
        md += positions_section(payload["positions"], positions_png)
    if payload.get("ablations"):
        md += sections(payload["ablations"])
    return md


def _header_section(entries: List[FitEntry], payload: dict) -> List[str]:
    skipped = payload.get("skipped")
    inputs = payload.get("inputs", "")
    md = ["# flopscale fit report", ""]
    if inputs:
        md += [f"Inputs: {inputs}.", ""]
    md += ["Units: loss in nats/token; N non-embedding parameters; D and B in tokens; S optimizer steps; "
           "C training FLOPs, non-embedding unless an entry says `compute: all` (1 PF-day = 8.64e19 FLOPs). "
           f"Fits minimise a Huber loss (delta {_deltas_text(entries)}) on log residuals, summed over points; "
           "intervals are bootstrap percentiles. The paper column quotes Kaplan et al. 2020 (Hoffmann et al. 2022 "
           "for `chinchilla` and `isoflop`, Muennighoff et al. 2023 for `data-constrained`); small-scale runs are "
           "not expected to match it.", ""]
    md += ["| fit | formula | compute | n_points | rmse_log | warnings |", "| --- | --- | --- | --- | --- | --- |"]
    for e in entries:
        md.append(f"| `{e.stem}` | {e.fit['formula']} | {e.fit.get('compute', '—')} | {e.fit['n_points']} | "
                  f"{e.fit['rmse_log']:.4g} | {len(e.fit.get('warnings') or [])} |")
    md.append("")
    if skipped:
        md += ["Not fitted: " + "; ".join(f"`{k}` ({v})" for k, v in skipped.items()) + ".", ""]
    return md


def _glance_section() -> List[str]:
    panels = ", ".join(f"[{k}]({v})" for k, v in PANEL_FILES.items() if k != "overview")
    return ["## The study at a glance", "",
            "Kaplan et al.'s Figure 1 laid out for these runs: 1 loss against compute (curves coloured by N, the "
            "frontier, the L(C) fit), 2 against tokens, 3 against N beside N_total (embeddings included, Figure 6), "
            "4 N_opt(C) by Hoffmann et al.'s approaches 1, 2, 3 under both compute conventions, 5 B_crit(L), "
            "6 the isoFLOP slices. Dashed curves and diamonds are cooldown branches. Each panel is also its own "
            "file: " + panels + ".", "", "![overview](overview.png)", ""]


def _frontier_section(frontier: Optional[dict]) -> List[str]:
    if frontier is None:
        return []
    md = ["## Compute-efficient frontier", "",
          f"Lower envelope of the runs' loss curves against measured C ({frontier.get('compute', 'nonembedding')}; "
          "Kaplan Fig. 1, Hoffmann approach 1); envelope points are neighbours on the same curves, so their "
          "bootstrap intervals understate the uncertainty.", ""]
    if "N_opt" in frontier:
        q = frontier["N_opt"]
        md.append(f"- N_opt(C) along the envelope: N ~ C^{q['exponent']:.3f} "
                  f"(95% [{_fmt(q['ci95']['exponent'][0])}, {_fmt(q['ci95']['exponent'][1])}]), "
                  f"from {q.get('n_sizes_on_frontier', '?')} model sizes on the envelope; "
                  f"paper {PAPER_ALLOCATION_EMPIRICAL['N']:.2f}.")
    return md + ["", "![frontier](frontier.png)", ""]


def _batch_section(batch: Optional[dict]) -> List[str]:
    if batch is None:
        return []
    md = ["## Critical batch size", ""]
    for k, v in batch.items():
        md.append(f"- {k}: {v}" if not isinstance(v, (list, dict)) else f"- {k}: {len(v)} entries (fits.json)")
    return md + [""]


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


def positions_section(fits: List[dict], png: Optional[str]) -> List[str]:
    """report.md's section: a table of the fits and the plot."""
    if not fits:
        return []
    md = ["## Loss per token position", "",
          f"Each run's last eval, loss at position t fitted by {POSITION_FORMULA} (Kaplan et al. 2020, Figure 20: the "
          "per-token loss falls as a power law in the position). An LSTM's curve flattening after a few tokens is "
          "the paper's Figure 7 point; toy runs with short contexts may not show it.", "",
          "| run | arch | N | step | L_inf | t_c | alpha_t | rmse |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in fits:
        p = e.get("params")
        cells = (f"{p['L_inf']:.4g} | {p['t_c']:.4g} | {p['alpha_t']:.4g} | {e['rmse']:.3g}" if p
                 else f"— | — | — | {e.get('note', '')}")
        md.append(f"| {os.path.basename(e['run'].rstrip('/'))} | {e['arch']} | {e['N']} | {e['step']} | {cells} |")
    md.append("")
    if png:
        md += [f"![positions]({os.path.basename(png)})", ""]
    return md
