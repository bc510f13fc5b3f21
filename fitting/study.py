"""What a set of runs (or a table) spans, the exponent table against the papers, one line per law
saying what this study can and cannot tell, and the fits.json payload that carries them all.
report.py renders them.

    from flopscale.fitting.study import study_from_runs, exponent_rows, caveats, build_payload
    st = study_from_runs(load_runs(["sweeps/s/runs"]))     # {"summary": {...}, "runs": [...], "curves": [...]}
    rows = exponent_rows(payload, st["summary"])            # [{"quantity", "fit", "value", "ci95", ...}]
    lines = caveats(payload, st["summary"])                 # {fit name: one line}
    payload = build_payload(entries, frontiers=..., inputs="33 run directories under ...", study=st["summary"])

Cooldown branches: a run whose config.json `train` holds "init_from": "PARENT_DIR@STEP" started
from another run's checkpoint (a warmup-stable-decay cooldown). Its points enter every fit like
any run's; the summary lists them and the panels mark them.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .estimator import FitError, fit_power
from .frontier import run_curve
from .laws import PAPER, PAPER_ALLOCATION_EMPIRICAL, PAPER_ALLOCATION_HOFFMANN, allocation_exponents
from .numbers import fmt
from .results import FitEntry, clean_json, frontiers_by_compute
from .runs import load_run, run_point

CONVENTIONS = ("nonembedding", "all")


def _rng(v) -> Optional[List[float]]:
    v = np.asarray([x for x in v if x is not None and math.isfinite(x) and x > 0], float)
    return [float(v.min()), float(v.max())] if v.size else None


def _dec(r) -> float:
    return float(np.log10(r[1] / r[0])) if r else 0.0


def _parse_init(init) -> Optional[Dict]:
    if not init:
        return None
    s = str(init)
    parent, _, step = s.rpartition("@")
    try:
        return {"init_from": s, "parent": os.path.basename(os.path.normpath(parent)) or parent,
                "parent_path": parent, "step": int(step)}
    except ValueError:
        return {"init_from": s, "parent": s, "parent_path": s, "step": None}


def study_from_runs(runs: Sequence, point: str = "best") -> Dict:
    """Per-run rows, plotting curves and the summary (JSON-safe) of a set of runs."""

    rows, curves = [], []
    for r in runs:
        cfg = r.config
        p = run_point(r, point, tokens_seen=True)
        ok = np.isfinite(r.flops) & np.isfinite(r.flops_total) & (r.flops_total > 0)
        share = float(r.flops[ok][-1] / r.flops_total[ok][-1]) if ok.any() else None
        C_all = None
        ev = np.flatnonzero(np.isfinite(r.val_loss))
        i = int(ev[np.argmin(r.val_loss[ev])]) if ev.size and point == "best" else (int(ev[-1]) if ev.size else -1)
        if np.isfinite(r.flops_total[i]):
            C_all = float(r.flops_total[i])
        ntot = cfg.get("n_params_total")
        cool = _parse_init((cfg.get("train") or {}).get("init_from"))
        row = {"name": r.name, "N": r.N, "N_total": float(ntot) if ntot else None,
               "n_layer": (cfg.get("model") or {}).get("n_layer"), "D": p["D"], "U": p["U"], "C": p["C"],
               "C_all": C_all, "loss": p["loss"], "step": p["S"], "tokens_per_param": p["D"] / r.N,
               "nonembedding_share": share, "cooldown": cool,
               # the run's best evaluation is its last: still improving when it stopped
               "improving_at_end": bool(ev.size >= 2 and i == int(ev[-1]))}
        if cool and cool["step"] is not None:
            row["cooldown"]["compute_note"] = _branch_compute_note(r, cool)
        rows.append(row)
        cv = {}
        for conv in CONVENTIONS:
            c = run_curve(r, 0.0, conv) if (conv == "nonembedding" or np.isfinite(r.flops_total).any()) else None
            if c is not None:
                cv[conv] = c
        if "nonembedding" in cv:
            C, L = cv["nonembedding"]
            okt = np.isfinite(r.flops) & (r.flops > 0)
            cv["tokens"] = (np.interp(C, r.flops[okt], r.tokens[okt]), L)
        curves.append(cv)
    return {"summary": summarise(rows, source="runs"), "runs": rows, "curves": curves}


def _branch_compute_note(run, cool) -> Optional[str]:
    """A branch's logged flops should count its parent's compute up to the branch step (the model
    it trains cost that much); say so when its first row counts less than the parent had spent."""

    cands = [cool["parent_path"], os.path.join(os.path.dirname(os.path.normpath(run.path)), cool["parent"])]
    for c in cands:
        if os.path.isfile(os.path.join(c, "metrics.jsonl")):
            try:
                par = load_run(c)
            except FitError:
                return None
            k = np.flatnonzero(par.step <= cool["step"])
            if not k.size or not run.flops.size:
                return None
            spent = float(par.flops[k[-1]])
            if run.flops[0] < 0.5 * spent:
                return (f"its flops start at {run.flops[0]:.3g}, below the {spent:.3g} its parent had spent by step "
                        f"{cool['step']}: its C counts the cooldown only")
            return None
    return None


def study_from_table(cols: Dict) -> Dict:
    """Rows and summary from a table (no curves, no compute shares: a table carries one C)."""
    def num(k):
        v = cols.get(k)
        if v is None or hasattr(v, "message"):
            return None
        return np.asarray(v, float)
    N, D, C, L, Nt = num("N"), num("D"), num("C"), num("loss"), num("N_total")
    n = len(L) if L is not None else 0
    rows = []
    for i in range(n):
        rows.append({"name": f"row {i + 2}", "N": None if N is None else float(N[i]),
                     "N_total": None if Nt is None else float(Nt[i]), "n_layer": None,
                     "D": None if D is None else float(D[i]), "C": None if C is None else float(C[i]),
                     "C_all": None, "loss": float(L[i]), "cooldown": None, "nonembedding_share": None,
                     "tokens_per_param": float(D[i] / N[i]) if D is not None and N is not None else None,
                     "improving_at_end": False})
    return {"summary": summarise(rows, source="table"), "runs": rows, "curves": []}


def summarise(rows: List[Dict], source: str) -> Dict:
    def col(k):
        return [r[k] for r in rows if r.get(k) is not None]
    s: Dict = {"source": source, "n_runs": len(rows)}
    for k in ("N", "N_total", "D", "C", "C_all", "tokens_per_param", "loss"):
        s[k + "_range"] = _rng(col(k))
    s["n_sizes"] = int(np.unique(col("N")).size)
    s["N_decades"] = _dec(s["N_range"])
    s["C_decades"] = _dec(s["C_range"])
    sh = [v for v in col("nonembedding_share") if v is not None]
    s["nonembedding_share"] = ({"min": float(min(sh)), "median": float(np.median(sh)), "max": float(max(sh))}
                               if sh else None)
    D = np.asarray(col("D"), float)
    s["fixed_token_budget"] = bool(D.size >= 2 and D.max() <= D.min() * 1.01)
    s["n_improving_at_end"] = int(sum(bool(r.get("improving_at_end")) for r in rows))
    # sizes trained at several token counts (what L(N, D) and Chinchilla's fit need)
    byN: Dict[float, set] = {}
    for r in rows:
        if r.get("N") and r.get("D"):
            byN.setdefault(r["N"], set()).add(round(math.log(r["D"]), 3))
    s["sizes_with_several_D"] = int(sum(len(v) >= 2 for v in byN.values()))
    s["cooldowns"] = [dict(run=r["name"], N=r["N"], D=r["D"], loss=r["loss"], **r["cooldown"])
                      for r in rows if r.get("cooldown")]
    s["n_layers"] = sorted({int(r["n_layer"]) for r in rows if r.get("n_layer") is not None})
    # approach 3 uses C = 6 N D; the measured C of either convention against it, C ~ k (6ND)^gamma
    s["c_vs_6ND"] = {}
    for conv, key in (("nonembedding", "C"), ("all", "C_all")):
        pr = [(6 * r["N"] * r["D"], r[key]) for r in rows if r.get(key) and r.get("N") and r.get("D")]
        if len(pr) >= 3 and np.unique([p[0] for p in pr]).size >= 2:
            x, y = np.array(pr).T
            q = fit_power(x, y, n_boot=0)
            s["c_vs_6ND"][conv] = {"gamma": q["exponent"], "coef": q["coef"],
                                   "ratio_range": [float((y / x).min()), float((y / x).max())]}
    return s


# ------------------------------------------------------------------------------------------------
# The exponent table
# ------------------------------------------------------------------------------------------------

def _fits_by_name(payload) -> Dict[str, dict]:
    return {f.get("name", f["law"]): f for f in payload.get("fits", [])}


def approach3(fit: dict, summary: Optional[Dict]) -> List[Dict]:
    """Approach 3's a, b in C = 6ND, and converted to each measured convention with C ~ k (6ND)^gamma
    (a -> a/gamma, b -> b/gamma; the interval ignores gamma's own uncertainty)."""
    al = fit["allocation"]
    out = [{"compute": "6ND", "a": al["a"], "b": al["b"], "ci95": al["ci95"], "gamma": 1.0}]
    for conv, g in ((summary or {}).get("c_vs_6ND") or {}).items():
        gm = g["gamma"]
        ci = {k: (None if al["ci95"].get(k) is None else [v / gm for v in al["ci95"][k]]) for k in ("a", "b")}
        out.append({"compute": conv, "a": al["a"] / gm, "b": al["b"] / gm, "ci95": ci, "gamma": gm})
    return out


def exponent_rows(payload: dict, summary: Optional[Dict] = None) -> List[Dict]:
    """One row per fitted exponent: value, 95% interval, Kaplan et al.'s and Hoffmann et al.'s."""
    fits = _fits_by_name(payload)
    rows: List[Dict] = []

    def add(q, fit, key, compute=None, kaplan=None, hoffmann=None, note=""):
        f = fits.get(fit)
        if f is None or key not in f["params"]:
            return
        rows.append({"quantity": q, "fit": fit, "compute": compute or f.get("compute"), "value": f["params"][key],
                     "ci95": (f.get("ci95") or {}).get(key), "kaplan": kaplan, "hoffmann": hoffmann, "note": note})

    add("alpha_N", "n", "alpha_N", kaplan=PAPER["n"]["alpha_N"], note="N non-embedding")
    add("alpha_N (embeddings included)", "n_total", "alpha_N",
        note="N_total = all parameters; Kaplan Fig. 6: no clean power law with embeddings")
    add("alpha_D", "d", "alpha_D", kaplan=PAPER["d"]["alpha_D"])
    for name, f in fits.items():
        if f["law"] == "c":
            add("alpha_C", name, "alpha_C", kaplan=PAPER["c"]["alpha_C"] if f.get("compute") != "all" else None)
    add("alpha_N of L(N, D)", "nd", "alpha_N", kaplan=PAPER["nd"]["alpha_N"])
    add("alpha_D of L(N, D)", "nd", "alpha_D", kaplan=PAPER["nd"]["alpha_D"])
    add("alpha_N of L(N, S)", "ns", "alpha_N", kaplan=PAPER["ns"]["alpha_N"])
    add("alpha_S of L(N, S)", "ns", "alpha_S", kaplan=PAPER["ns"]["alpha_S"])
    for name, f in fits.items():
        if f["law"] == "bcrit":
            add("alpha_B of B_crit(L)", name, "alpha_B", kaplan=PAPER["bcrit"]["alpha_B"])
            add("B_star of B_crit(L) (tokens)", name, "B_star", kaplan=PAPER["bcrit"]["B_star"])
    ch = PAPER["chinchilla"]
    add("Chinchilla alpha (N)", "chinchilla", "alpha", hoffmann=ch["alpha"])
    add("Chinchilla beta (D)", "chinchilla", "beta", hoffmann=ch["beta"])
    add("Chinchilla E (nats/token)", "chinchilla", "E", hoffmann=ch["E"])

    H = PAPER_ALLOCATION_HOFFMANN
    kap = H["Kaplan et al."]
    for conv, fr in frontiers_by_compute(payload).items():
        for key, q, ex in (("N_opt", "a", "N_opt ~ C^a"), ("D_opt", "b", "D_opt ~ C^b")):
            if key in fr:
                rows.append({"quantity": f"{ex}, approach 1 (frontier)", "fit": "frontier", "compute": conv,
                             "value": fr[key]["exponent"], "ci95": fr[key]["ci95"]["exponent"],
                             "kaplan": kap[q], "hoffmann": H["approach 1"][q],
                             "note": "intervals understate (neighbouring envelope points)"})
    for name, f in fits.items():
        if f["law"] == "isoflop":
            for q, ex in (("a", "N_opt ~ C^a"), ("b", "D_opt ~ C^b")):
                if q in f["params"]:
                    rows.append({"quantity": f"{ex}, approach 2 (isoFLOP)", "fit": name, "compute": f.get("compute"),
                                 "value": f["params"][q], "ci95": (f.get("ci95") or {}).get(q), "kaplan": kap[q],
                                 "hoffmann": H["approach 2"][q], "note": ""})
    for name, f in fits.items():
        if f.get("allocation") and f["law"] == "chinchilla":
            for a3 in approach3(f, summary):
                for q, ex in (("a", "N_opt ~ C^a"), ("b", "D_opt ~ C^b")):
                    note = ("C = 6ND, as Hoffmann et al." if a3["compute"] == "6ND" else
                            f"converted: C_{a3['compute']} ~ (6ND)^{a3['gamma']:.3f} over these runs")
                    rows.append({"quantity": f"{ex}, approach 3 (L(N, D) fit)", "fit": name, "compute": a3["compute"],
                                 "value": a3[q], "ci95": a3["ci95"].get(q), "kaplan": kap[q],
                                 "hoffmann": H["approach 3"][q], "note": note})
    if payload.get("allocation"):
        rows.append({"quantity": "N_opt ~ C_min^a, derived from L(N, S) and B_crit(L)", "fit": "ns + bcrit",
                     "compute": "nonembedding", "value": payload["allocation"]["N"], "ci95": None,
                     "kaplan": PAPER_ALLOCATION_EMPIRICAL["N"], "hoffmann": None,
                     "note": f"Kaplan's constants imply {payload['allocation_paper']['derived']['N']:.2f}, he measured "
                             f"{PAPER_ALLOCATION_EMPIRICAL['N']:.2f}"})
    return rows


# ------------------------------------------------------------------------------------------------
# One line per law: what this study can and cannot tell
# ------------------------------------------------------------------------------------------------

def _g(v) -> str:
    return fmt(v, missing="?")


def _rel_width(ci, v) -> Optional[float]:
    if ci is None or v is None or not v or any(x is None or not math.isfinite(x) for x in ci):
        return None
    return float((ci[1] - ci[0]) / abs(v))


def _identified(f: dict, keys) -> str:
    """'identified' / 'not identified: ...' for the exponents among keys."""
    bad = []
    for k in keys:
        ci = (f.get("ci95") or {}).get(k)
        v = f["params"].get(k)
        if ci is None:
            continue
        w = _rel_width(ci, v)
        if w is None or w > 1.0:
            bad.append(f"{k}'s interval is {'unbounded' if w is None else f'{w:.1f}x'} its estimate")
    for w in f.get("warnings") or []:
        if "bound or a plateau" in w:
            bad.append(w.split(":")[0] + " sits at a bound")
    return "not identified (" + "; ".join(dict.fromkeys(bad)) + ")" if bad else "identified"


def _exp_text(f, k) -> str:
    ci = (f.get("ci95") or {}).get(k)
    v = f["params"][k]
    w = _rel_width(ci, v)
    iv = "" if ci is None else f" [{_g(ci[0])}, {_g(ci[1])}]"
    return f"{k} = {_g(v)}{iv}" + ("" if w is None else f" (interval {100 * w:.0f}% of the estimate)")


def _share_text(s) -> str:
    sh = s.get("nonembedding_share")
    if not sh:
        return "the non-embedding share of compute is unknown (no flops_total)"
    return (f"non-embedding FLOPs are {100 * sh['min']:.0f}-{100 * sh['max']:.0f}% (median {100 * sh['median']:.0f}%) "
            f"of all FLOPs, so {100 * (1 - sh['median']):.0f}% of the median run's compute lies outside the paper's C")


def caveats(payload: dict, summary: Optional[Dict]) -> Dict[str, str]:
    """{fit or approach name: one line}, computed from the points and the fits."""
    s = summary or {}
    tpp = s.get("tokens_per_param_range")
    tpp_t = f"{_g(tpp[0])}-{_g(tpp[1])} tokens per parameter" if tpp else "tokens per parameter unknown"
    out: Dict[str, str] = {}
    for name, f in _fits_by_name(payload).items():
        line_for = _CAVEAT_LINES.get(f["law"])
        out[name] = line_for(name, f, payload, s, tpp_t) if line_for else f"{f.get('n_points')} points"
    out.update(_approach_caveats(payload, s))
    return out


def _span(f: dict, k: str, label=None) -> str:
    r = (f.get("ranges") or {}).get(k)
    if not r:
        return ""
    return f"{_g(r[0])}-{_g(r[1])} {label or k} ({_dec(r):.2f} decades)"


def _caveat_n(name, f, payload, s, tpp_t) -> str:
    total = name == "n_total"
    line = (f"{f.get('n_points')} sizes over "
            f"{_span(f, 'N', 'parameters' + (' (all, embeddings included)' if total else ''))}; "
            f"{_exp_text(f, 'alpha_N')}, {_identified(f, ['alpha_N'])}")
    if s.get("fixed_token_budget") and s.get("D_range"):
        line += (f"; read at a fixed budget of {_g(s['D_range'][0])} tokens ({tpp_t}), not at convergence: "
                 f"larger models are further from their converged loss, which flattens alpha_N")
    elif s.get("n_improving_at_end"):
        line += (f"; {s['n_improving_at_end']} of {s['n_runs']} runs were still improving at their last "
                 f"evaluation ({tpp_t}), so L(N) is read short of convergence")
    if total:
        base = _fits_by_name(payload).get("n")
        if base:
            worse = f["rmse_log"] > base["rmse_log"]
            line += (f"; with embeddings the trend is {'worse' if worse else 'no worse'}: rmse_log "
                     f"{f['rmse_log']:.3g} against {base['rmse_log']:.3g} without (Kaplan Fig. 6)")
    return line


def _caveat_d(name, f, payload, s, tpp_t) -> str:
    return (f"{f.get('n_points')} points over {_span(f, 'D', 'tokens')}; {_exp_text(f, 'alpha_D')}, "
            f"{_identified(f, ['alpha_D'])}")


def _caveat_c(name, f, payload, s, tpp_t) -> str:
    conv = f.get("compute", "nonembedding")
    fr = frontiers_by_compute(payload).get(conv, {})
    env = fr.get("envelope") or {}
    nsz = (fr.get("N_opt") or {}).get("n_sizes_on_frontier")
    carried = sum(bool(x) for x in env.get("carried", []))
    return (f"{f.get('n_points')} envelope points over {_span(f, 'C', 'FLOPs')}"
            + (f", {nsz} sizes on the envelope" if nsz else "")
            + (f", {carried} carried flat from a lower C" if carried else "")
            + f"; {_exp_text(f, 'alpha_C')}, {_identified(f, ['alpha_C'])}; the envelope points are "
              f"neighbours on a few curves, so the interval is a lower bound; C = {conv}: " + _share_text(s))


def _caveat_nd(name, f, payload, s, tpp_t) -> str:
    law = f["law"]
    keys = ["alpha_N", "alpha_D"] if law == "nd" else ["alpha", "beta"]
    line = (f"{f.get('n_points')} runs over {_span(f, 'N', 'parameters')} and {_span(f, 'D', 'tokens')}; "
            f"{s.get('sizes_with_several_D', '?')} of {s.get('n_sizes', '?')} sizes trained at several D; "
            + ", ".join(_exp_text(f, k) for k in keys) + f"; {_identified(f, keys)}")
    if law == "chinchilla":
        line += f"; E = {_g(f['params']['E'])} is an extrapolation past every point"
    if s.get("sizes_with_several_D", 0) < 2:
        line += "; too few sizes with several D to separate the N and D terms"
    return line


def _caveat_ns(name, f, payload, s, tpp_t) -> str:
    return (f"{f.get('n_points')} evaluations over {_span(f, 'N', 'parameters')} and {_span(f, 'S', 'steps')}; "
            + ", ".join(_exp_text(f, k) for k in ("alpha_N", "alpha_S"))
            + f"; {_identified(f, ['alpha_N', 'alpha_S'])}")


def _caveat_bcrit(name, f, payload, s, tpp_t) -> str:
    r = (f.get("ranges") or {}).get("loss")
    lr = f"losses {_g(r[0])}-{_g(r[1])} nats (a factor {r[1] / r[0]:.2f})" if r else "losses"
    return (f"{f.get('n_points')} points over {lr}, far above the paper's; {_exp_text(f, 'alpha_B')}, "
            f"B_star = {_g(f['params']['B_star'])} tokens; {_identified(f, ['alpha_B'])}; "
            f"B_star extrapolates to loss 1")


def _caveat_isoflop(name, f, payload, s, tpp_t) -> str:
    sl = f.get("slices") or []
    used = [x for x in sl if "N_opt" in x]
    Cs = [x["C"] for x in used]
    return (f"{len(used)} of {len(sl)} slices used over "
            + (f"{_dec([min(Cs), max(Cs)]):.2f} decades of C ({f.get('compute', 'nonembedding')})" if Cs else "no C")
            + f", {f.get('n_points')} points; " + ", ".join(_exp_text(f, k) for k in ("a", "b") if k in f["params"])
            + f"; {_identified(f, ['a'])}" + ("" if len(used) >= 4 else "; fewer than 4 slices: a rests on a "
                                                                      "line through very few minima"))


_CAVEAT_LINES = {"n": _caveat_n, "d": _caveat_d, "c": _caveat_c, "nd": _caveat_nd, "chinchilla": _caveat_nd,
                 "data-constrained": _caveat_nd, "ns": _caveat_ns, "bcrit": _caveat_bcrit,
                 "isoflop": _caveat_isoflop}


def _approach_caveats(payload: dict, s: Dict) -> Dict[str, str]:
    """Approach 1 per compute convention (the envelope's N_opt) and approach 3 (from chinchilla)."""
    out: Dict[str, str] = {}
    for conv, fr in frontiers_by_compute(payload).items():
        q = fr.get("N_opt")
        if q:
            ci = q["ci95"]["exponent"]
            w = _rel_width(ci, q["exponent"])
            ident = ("not identified: the interval is wider than the estimate" if w is None or w > 1
                     else f"interval {100 * w:.0f}% of the estimate, a lower bound")
            out[f"approach 1 ({conv})"] = (
                f"N_opt ~ C^{q['exponent']:.3f} [{_g(ci[0])}, {_g(ci[1])}] read off a staircase of "
                f"{q.get('n_sizes_on_frontier', '?')} discrete sizes along the envelope; {ident}")
    for name, f in _fits_by_name(payload).items():
        if f["law"] == "chinchilla" and f.get("allocation"):
            a3 = approach3(f, s)
            conv = "; ".join(f"{x['compute']}: a = {x['a']:.3f}" for x in a3)
            out["approach 3"] = (f"from the L(N, D) fit at C = 6ND ({conv}); only as good as alpha and beta, "
                                 f"{_identified(f, ['alpha', 'beta'])}")
    return out


# ------------------------------------------------------------------------------------------------
# The fits.json payload
# ------------------------------------------------------------------------------------------------

def build_payload(entries: List[FitEntry], *, frontiers: Optional[dict] = None, compute: str = "nonembedding",
                  batch: Optional[dict] = None, inputs: str = "", skipped: Optional[Dict[str, str]] = None,
                  study: Optional[dict] = None) -> dict:
    """The fits.json content (strict JSON: NaN and inf as null). study: study.summarise's dict."""
    payload = {"inputs": inputs, "fits": [dict(e.fit, source=e.source, name=e.stem) for e in entries]}
    frontiers = frontiers or {}
    for conv, fr in frontiers.items():
        key = "frontier" if conv == compute else f"frontier_{conv}"
        payload[key] = {k: v for k, v in fr.items() if k != "L_C"}  # law `c` is its own entry in "fits"
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

    payload = clean_json(payload)
    if study is not None:
        payload["study"] = clean_json(study)
    payload["exponents"] = clean_json(exponent_rows(payload, study))
    payload["caveats"] = caveats(payload, study)
    return payload
