"""Point selection: which points each law is fitted to, from runs or from a table (compute).

    from flopscale.fitting.selection import plan_runs, plan_table, plan_groups
    plan, skipped, extra = plan_runs(["sweeps/s/runs"], laws=None, point="best", n_boot=200, seed=0,
                                     fixed={}, compute="nonembedding", slice_tol=0.05)
    # plan: [{"law", "cols", "source", "name", "compute", "fix", "tag"}], one item per fit to run

From runs (fitting/runs.py reads them): `n` the lowest loss per distinct N, `d` per distinct D
(or, at fixed D, the runs at that D), `c` the compute frontier (fitting/frontier.py), `nd` and
`chinchilla` every run, `ns` every evaluation past the first 20% of each run, `bcrit` the logged
noise scale or (S, E) pairs (fitting/batch.py), `isoflop` the runs sliced by budget; each C-based
law once more under the other compute convention. In auto mode a law is planned only where it is
testable (>= 3 distinct values of each scale input); `skipped` says why the others were not.
From a table: the columns each law needs, one plan per value of a --group column (plan_groups).
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Optional

import numpy as np

from . import batch as B
from .estimator import FitError, NonNumericColumn, check_fix, check_points
from .frontier import frontier, run_curve
from .isoflop import PARAMS as ISOFLOP_PARAMS, check_isoflop_points, group_slices
from .laws import LAWS, b_crit, s_min
from .runs import best_per, curve_points, load_runs, read_csv, run_points
from .study import study_from_runs


AUTO_FROM_CSV = ("n", "d", "c", "nd", "ns", "chinchilla", "data-constrained", "isoflop")



ALL_LAWS = tuple(LAWS) + ("isoflop",)



C_BASED = ("c", "isoflop")          # laws whose input is the compute C



COMPUTE = {"nonembedding": "flops", "all": "flops_total"}  # --compute -> metrics.jsonl key



def parse_laws(spec) -> Optional[List[str]]:
    if spec is None or spec in ("auto", ""):
        return None
    laws = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    for l in laws:
        if l not in ALL_LAWS:
            raise FitError(f"unknown law {l!r}; choose one of {', '.join(ALL_LAWS)} (or auto)")
    return laws



def _law_params(law: str):
    return ISOFLOP_PARAMS if law == "isoflop" else LAWS[law].params



def _fix_for(law: str, fixed: Dict[str, float], explicit: bool) -> Optional[Dict[str, float]]:
    """The fixed values that apply to a law: all of them, or None (auto: the law is skipped)."""
    if not fixed:
        return {}
    names = _law_params(law)
    if all(k in names for k in fixed):
        if law != "isoflop":
            check_fix(LAWS[law], dict(fixed))
        return dict(fixed)
    if explicit:
        bad = [k for k in fixed if k not in names][0]
        raise FitError(f"--fix {bad}: not a parameter of law {law!r} (its parameters: {', '.join(names)})")
    return None



def _enough_for_auto(law: str, cols, n_fixed: int = 0) -> None:
    """auto mode fits a law only where it is testable: >= 3 distinct values of each scale input
    and at least one point more than parameters (an explicit --law fits anyway, with warnings)."""
    L = LAWS[law]
    for k in L.inputs:
        if k not in ("loss", "U") and np.unique(cols[k]).size < 3:
            raise FitError(f"{np.unique(cols[k]).size} distinct value(s) of {k}, auto needs 3")
    if len(cols[L.target]) <= L.n_params - n_fixed:
        raise FitError(f"{len(cols[L.target])} points for {L.n_params - n_fixed} free parameters")
    if law == "data-constrained" and not (np.asarray(cols["D"], float) > np.asarray(cols["U"], float) * (1 + 1e-9)).any():
        raise FitError("no point repeats its data (D <= U everywhere)")



def _item(law, cols, source, name="", compute=None, fix=None, tag=None):
    return {"law": law, "cols": cols, "source": source, "name": name or law, "compute": compute, "fix": fix or {},
            "tag": tag or {}}



# the embedding-included view of L(N) (Kaplan Fig. 6): law n on all parameters, fit entry `n_total`
N_TOTAL_TAG = {"N_counts": "all parameters (embeddings included): config.json n_params_total, or a table's N_total"}



def plan_csv(path: str, laws: Optional[List[str]], fixed, compute):

    plan, skipped = plan_table(read_csv(path), path, laws, fixed, compute)
    return plan, skipped, {"csv": path}



def plan_table(cols, path: str, laws: Optional[List[str]], fixed, compute):

    plan, skipped = [], {}
    for law in laws or AUTO_FROM_CSV:
        fx = _fix_for(law, fixed, laws is not None)
        if fx is None:
            skipped[law] = "--fix names are not its parameters"
            continue
        conv = compute if law in C_BASED else None
        if law == "isoflop":
            if laws is None and not all(k in cols for k in ("N", "C", "loss")):
                continue
            c = {k: cols[k] for k in ("N", "C", "loss", "D") if k in cols}
            plan.append(_item(law, c, path, compute=conv, fix=fx))
            continue
        L = LAWS[law]
        need = list(L.inputs) + [L.target]
        if laws is None and not all(k in cols for k in need):
            continue  # auto: only the laws whose columns are present
        c = {k: cols[k] for k in need if k in cols}
        if laws is None:
            check_points(law, c, len(fx))
            try:
                _enough_for_auto(law, c, len(fx))
            except FitError as e:
                skipped[law] = str(e)
                continue
        # L(N) (L(D)) from a table that also varies D (N): the best loss per N (D), as for runs
        other = {"n": "D", "d": "N"}.get(law)
        if other and other in cols and not hasattr(cols[other], "message") and np.unique(cols[other]).size > 1 \
                and len(c) == len(need):
            check_points(law, c, len(fx))  # report bad values before the selection could hide them
            plan.append(_item(law, best_per(c, L.inputs[0]), f"{path}: lowest loss per {L.inputs[0]}", compute=conv,
                              fix=fx))
        else:
            plan.append(_item(law, c, path, compute=conv, fix=fx))
        if law == "n" and "N_total" in cols and not hasattr(cols["N_total"], "message"):
            t = {"N": cols["N_total"], "loss": cols["loss"]}
            if "D" in cols and not hasattr(cols["D"], "message") and np.unique(cols["D"]).size > 1:
                t = best_per(dict(t, key=np.asarray(cols["N"], float)), "key")
                t = {"N": t["N"], "loss": t["loss"]}
            try:
                check_points("n", t, len(fx))
                if laws is None:
                    _enough_for_auto("n", t, len(fx))
                plan.append(_item("n", t, f"{path}: column N_total", name="n_total", fix=fx, tag=N_TOTAL_TAG))
            except FitError as e:
                skipped["n_total"] = str(e)
    if laws is None and "isoflop" in [p["law"] for p in plan]:
        # auto: isoflop only where the table holds slices (several sizes at several budgets)
        it = [p for p in plan if p["law"] == "isoflop"][0]
        try:
            C = check_isoflop_points(it["cols"])["C"]
            ok = sum(g.size >= 3 for g in group_slices(C)) >= 3
        except FitError as e:
            ok, skipped["isoflop"] = False, str(e)
        if not ok:
            plan.remove(it)
            skipped.setdefault("isoflop", "fewer than 3 budgets with 3 or more points")
    return plan, skipped



def fixed_d_runs(pts: Dict[str, np.ndarray], min_sizes: int = 4) -> Optional[np.ndarray]:
    """Indices of the runs that share one token count D across the most sizes, when the runs
    train some size at several D (an isoFLOP or L(N, D) grid): Kaplan's L(N) is read at a fixed
    D, and "lowest loss per N" would then mix sizes trained on very different D.  None when
    every size has one D (lowest per N is then the same thing), or no D is shared by
    ``min_sizes`` sizes over a decade of N."""
    N, D = pts["N"], pts["D"]
    if all(np.unique(D[N == n]).size == 1 for n in np.unique(N)):
        return None
    best = None
    for d in np.unique(D):
        idx = np.flatnonzero(D == d)
        sizes = np.unique(N[idx])
        if sizes.size >= min_sizes and sizes.max() >= 10 * sizes.min() and (best is None or sizes.size > best[1]):
            keep = np.array([idx[np.argmin(np.where(N[idx] == n, pts["loss"][idx], np.inf))] for n in sizes])
            best = (keep, sizes.size)
    return None if best is None else np.sort(best[0])



def resliced_points(primary: Dict[str, np.ndarray], other: Dict[str, np.ndarray], slice_tol: float,
                    min_runs: int = 3) -> Optional[Dict[str, np.ndarray]]:
    """isoFLOP slices in a second compute convention for a grid laid out in the first.

    A budget of equal non-embedding C is not one of equal total C (the embedding share differs
    by size), so the runs of one design budget spread over a fraction of a decade in the other
    convention and form no slice.  For each design budget (a slice of ``primary``'s C with
    ``min_runs`` runs or more), its C in the other convention is the geometric mean of its runs'
    ``other`` C; each size whose own runs bracket that C gets its loss there by log-log linear
    interpolation between its two neighbouring runs (its D scales with C at fixed N).  Sizes
    are never extrapolated.  ``other`` is the same runs, in the same order, in the second
    convention.  None when fewer than ``min_runs`` budgets get ``min_runs`` sizes."""

    N, C2, L2, D2 = (np.asarray(other[k], float) for k in ("N", "C", "loss", "D"))
    out = {k: [] for k in ("N", "C", "loss", "D")}
    n_slices = 0
    for g in group_slices(np.asarray(primary["C"], float), slice_tol):
        if g.size < min_runs:
            continue
        target = float(np.exp(np.mean(np.log(C2[g]))))
        got = 0
        for n in np.unique(N[g]):
            idx = np.flatnonzero(N == n)
            idx = idx[np.argsort(C2[idx])]
            c = C2[idx]
            if c.size < 2 or not c[0] <= target <= c[-1]:
                continue
            j = min(int(np.searchsorted(c, target)), c.size - 1)
            i = max(j - 1, 0)
            if c[j] == c[i]:
                w = 0.0
            else:
                w = (math.log(target) - math.log(c[i])) / (math.log(c[j]) - math.log(c[i]))
            lo, hi = idx[i], idx[j]
            out["N"].append(n)
            out["C"].append(target)
            out["loss"].append(math.exp((1 - w) * math.log(L2[lo]) + w * math.log(L2[hi])))
            out["D"].append(D2[lo] * target / C2[lo])
            got += 1
        n_slices += got >= min_runs
    if n_slices < min_runs:
        return None
    return {k: np.array(v, float) for k, v in out.items()}



def plan_runs(paths: List[str], laws: Optional[List[str]], point: str, n_boot: int, seed: int, fixed, compute,
              slice_tol: float):
    """(plan, skipped, extra) for run directories: extra holds the runs, the frontiers (approach 1),
    the frontier curves, the batch-size points and the study summary."""
    runs = load_runs(paths)
    pts = run_points(runs, point)
    P = _RunPlan(laws, fixed, compute, slice_tol)
    extra = {"runs": runs}
    src = f"{len(runs)} runs, {point} val_loss per run"
    _plan_point_laws(P, runs, pts, point, src)
    _plan_batch(P, runs, extra)
    _plan_ns(P, runs)
    _plan_compute_laws(P, runs, point, n_boot, seed, src, extra)
    extra["study"] = study_from_runs(runs, point)
    # keep the order of the laws for the report
    order = {k: i for i, k in enumerate(ALL_LAWS)}
    P.plan.sort(key=lambda p: order[p["law"]])
    return P.plan, P.skipped, extra


class _RunPlan:
    """The plan being built from runs: add() checks a law's points and plans it, or records why not."""

    def __init__(self, laws, fixed, compute, slice_tol):
        self.laws, self.fixed, self.compute, self.slice_tol = laws, fixed, compute, slice_tol
        self.want = laws or list(ALL_LAWS)
        self.plan: List[dict] = []
        self.skipped: Dict[str, str] = {}

    def add(self, law, cols, source, name="", conv=None, tag=None):
        laws = self.laws
        fx = _fix_for(law, self.fixed, laws is not None)
        if fx is None:
            self.skipped[name or law] = "--fix names are not its parameters"
            return
        try:
            if law == "isoflop":
                C = check_isoflop_points(cols)["C"]
                if laws is None and sum(g.size >= 3 for g in group_slices(C, self.slice_tol)) < 3:
                    raise FitError("fewer than 3 budgets with 3 or more runs")
            else:
                check_points(law, cols, len(fx))
                if laws is None:
                    _enough_for_auto(law, cols, len(fx))
        except FitError as e:
            if laws is not None and (conv in (None, self.compute)):
                raise FitError(f"law {law!r} from runs: {e}") from None
            self.skipped[name or law] = str(e)
            return
        self.plan.append(_item(law, cols, source, name, conv, fx, tag))


def _plan_point_laws(P: _RunPlan, runs, pts, point, src) -> None:
    """n (and n_total), d, nd, chinchilla, data-constrained: one point per run."""
    want, skipped = P.want, P.skipped
    if "n" in want:
        totals = np.array([r.config.get("n_params_total") or np.nan for r in runs], float)
        shared_d = fixed_d_runs(pts)
        if shared_d is not None:  # L(N) at one D shared by the most sizes (the runs also vary D)
            sel = {k: v[shared_d] for k, v in dict(pts, N_total=totals).items()}
            how = f"{src}, the runs at D = {sel['D'][0]:,.0f} tokens (L(N) at a fixed D)"
        else:
            sel = best_per(dict(pts, N_total=totals), "N")
            how = f"{src}, lowest per N"
        P.add("n", {k: sel[k] for k in ("N", "loss")}, how)
        if np.isfinite(totals).all():
            P.add("n", {"N": sel["N_total"], "loss": sel["loss"]},
                  f"{how}, against N_total = all parameters (config.json n_params_total)",
                  name="n_total", tag=N_TOTAL_TAG)
        else:
            skipped["n_total"] = "runs without n_params_total in config.json (the embedding-included view)"
    if "d" in want:
        P.add("d", best_per(pts, "D"), f"{src}, lowest per D (D = unique tokens seen)")
    if "nd" in want:
        P.add("nd", pts, src)
    if "chinchilla" in want:
        P.add("chinchilla", pts, src)
    if "data-constrained" in want:
        dc = run_points(runs, point, tokens_seen=True)
        P.add("data-constrained", {k: dc[k] for k in ("N", "D", "U", "loss")}, f"{src}; D tokens seen, U unique "
              "tokens (the run's data cap, or its corpus size)")


def _plan_batch(P: _RunPlan, runs, extra) -> None:
    """bcrit from the logged noise scale and from (S, E) pairs (fitting/batch.py)."""
    if not ("bcrit" in P.want or "ns" in P.want):
        return
    g = B.gns_points(runs)
    se = B.se_points(runs)
    extra["batch"] = {"gns_points": int(g["B"].size), "se_points": int(se["points"]["B"].size),
                      "se_detail": se["detail"]}
    if g["B"].size:
        P.add("bcrit", g, "logged grad_noise_scale (tokens) against smoothed train loss")
    if se["points"]["B"].size:
        P.add("bcrit", se["points"], "B_crit from steps and tokens to reach a loss at several batch sizes",
              name="bcrit_se")
    if not g["B"].size and not se["points"]["B"].size:
        P.skipped["bcrit"] = "no grad_noise_scale logged and no runs differing only in batch size"
        if P.laws is not None and "bcrit" in P.laws:
            raise FitError("law 'bcrit' from runs: no grad_noise_scale logged and no runs differing only in batch size")


def _plan_ns(P: _RunPlan, runs) -> None:
    """ns on every evaluation past 20% of each run, S converted to S_min where B_crit(L) is measured."""
    if "ns" not in P.want:
        return
    cp = curve_points(runs)
    source = "every evaluation past 20% of each run"
    have_bcrit = [p for p in P.plan if p["law"] == "bcrit"]
    source += (", S converted to S_min with the fitted B_crit(L)" if have_bcrit
               else ", S as run (no B_crit available to convert to S_min)")
    n = len(P.plan)
    P.add("ns", {k: cp[k] for k in ("N", "S", "loss")}, source)
    if have_bcrit and len(P.plan) > n:
        # S -> S_min (paper eq. 5.4) with the request's own bcrit fit, once it is fitted (to_s_min)
        P.plan[-1]["s_min"] = {"bcrit": have_bcrit[0]["name"], "B": cp["B"]}


def to_s_min(item: dict, bcrit_params: Dict[str, float]) -> dict:
    """An ns item (``item["s_min"]`` set by _plan_ns) with S converted to S_min = S / (1 + B_crit(L)/B)
    by the B_crit(L) the same request fitted (law bcrit, fitted before it: nothing is fitted twice)."""
    cols = item["cols"]
    S = s_min(cols["S"], item["s_min"]["B"], b_crit(cols["loss"], **bcrit_params))
    return dict(item, cols=dict(cols, S=S))


def _plan_compute_laws(P: _RunPlan, runs, point, n_boot, seed, src, extra) -> None:
    """c (the frontier's envelope, approach 1) and isoflop (approach 2) under each compute convention."""
    want, compute, laws = P.want, P.compute, P.laws
    have_total = all(np.isfinite(r.flops_total).any() for r in runs)
    extra["frontiers"] = {}
    for conv in [compute] + [c for c in COMPUTE if c != compute]:
        sfx = "" if conv == compute else f"_{conv}"
        if conv != compute and not have_total:
            for law in C_BASED:
                if law in want:
                    P.skipped[law + sfx] = "runs without flops_total in metrics.jsonl"
            continue
        if "c" in want:
            fr = None
            try:  # the envelope only: law c is fitted to it once, as a plan item
                fr = frontier(runs, point=point, n_boot=n_boot, seed=seed, compute=conv, fit_law=False)
            except FitError as e:
                if laws is not None and conv == compute:
                    raise
                P.skipped["c" + sfx] = str(e)
            if fr is not None:
                env = fr["envelope"]
                P.add("c", {"C": np.array(env["C"]), "loss": np.array(env["loss"])},
                      f"lower envelope of the loss curves (compute frontier), C = {conv}", name="c" + sfx, conv=conv)
                extra["frontiers"][conv] = fr
                if conv == compute:
                    extra["frontier_curves"] = [c for c in (run_curve(r, compute=conv) for r in runs) if c is not None]
        if "isoflop" in want:
            ip = run_points(runs, point, compute=conv, tokens_seen=True)
            cols = {k: ip[k] for k in ("N", "C", "loss", "D")}
            how = f"{src} (one point per run, slices by its C = {conv})"
            if conv != compute:
                moved = resliced_points(run_points(runs, point, compute=compute, tokens_seen=True), cols,
                                        P.slice_tol)
                if moved is not None:
                    cols, how = moved, (f"{src}: the budgets laid out in C = {compute}, each size's loss interpolated "
                                        f"(log-log, between its own runs) to the budgets' C = {conv}")
            P.add("isoflop", cols, how, name="isoflop" + sfx, conv=conv)


def _group_values(cols, col: str):
    """The --group column's cell per row (text or number, as a string) and the values in order."""
    if col not in cols:
        raise FitError(f"--group {col}: no such column (columns: {', '.join(map(str, cols))})")
    c = cols[col]
    if isinstance(c, NonNumericColumn):
        if c.values is None:
            raise FitError(f"--group {col}: the column's values are not available")
        cells = np.array([str(v) for v in c.values], dtype=object)
    else:
        cells = np.array([f"{float(v):g}" for v in np.asarray(c, float)], dtype=object)
    seen = list(dict.fromkeys(cells.tolist()))
    return cells, seen



def _subset(cols, mask):
    return {k: (v.take(mask) if isinstance(v, NonNumericColumn) else np.asarray(v)[mask]) for k, v in cols.items()}



def _stem(name: str, col: str, val: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}.{col}_{val}")



def plan_groups(cols, label, col, laws, fixed, compute):
    """One plan per value of the --group column; names LAW.COL_VALUE, each item tagged with its group."""
    cells, values = _group_values(cols, col)
    plan, skipped = [], {}
    for val in values:
        sub = _subset(cols, cells == val)
        try:
            p, sk = plan_table(sub, f"{label} [{col} = {val}]", laws, fixed, compute)
        except FitError as e:
            raise FitError(f"--group {col} = {val}: {e}") from None
        for it in p:
            it["name"] = _stem(it["name"], col, val)
            it["group"] = {"column": col, "value": val}
        plan += p
        skipped.update({_stem(k, col, val): v for k, v in sk.items()})
    return plan, skipped, values



def side_by_side(fits, col, values):
    """{"column", "values", "params": {law: {param: {value: number}}}} over the grouped fits."""
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for f in fits:
        g = f.get("group")
        if not g:
            continue
        for k, v in f["params"].items():
            table.setdefault(f["law"], {}).setdefault(k, {})[g["value"]] = v
    return {"column": col, "values": list(values), "params": table}
