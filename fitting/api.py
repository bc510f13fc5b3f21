"""The function behind `flopscale fit`: plan which laws the inputs support, fit them, report.

    from flopscale.fitting import fit_and_report
    fits = fit_and_report(["sweeps/s/runs"], out="sweeps/s/report", n_boot=200)   # fits.json content
    fits = fit_and_report(csv="isoflops.csv", laws="isoflop", fix="a=0.5")

fitting/cli.py is the argparse layer over it (flag names are the CLI contract of docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Optional

import numpy as np

from .estimator import HUBER_DELTA, N_BOOT, FitError, NonNumericColumn, as_columns, check_fix, check_points, fit, parse_fix
from .isoflop import PARAMS as ISOFLOP_PARAMS, TOL_DEX, WINDOW_DEX, fit_isoflop
from .laws import LAWS
from .writes import check_out_dir, write_error

AUTO_FROM_CSV = ("n", "d", "c", "nd", "ns", "chinchilla", "data-constrained", "isoflop")
ALL_LAWS = tuple(LAWS) + ("isoflop",)
C_BASED = ("c", "isoflop")          # laws whose input is the compute C
COMPUTE = {"nonembedding": "flops", "all": "flops_total"}  # --compute -> metrics.jsonl key


def _parse_laws(spec) -> Optional[List[str]]:
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


def _plan_csv(path: str, laws: Optional[List[str]], fixed, compute):
    from .runs import read_csv

    plan, skipped = _plan_table(read_csv(path), path, laws, fixed, compute)
    return plan, skipped, {"csv": path}


def _plan_table(cols, path: str, laws: Optional[List[str]], fixed, compute):
    from .runs import best_per

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
        from .isoflop import group_slices
        it = [p for p in plan if p["law"] == "isoflop"][0]
        try:
            from .isoflop import check_isoflop_points
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
    from .isoflop import group_slices

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


def _plan_runs(paths: List[str], laws: Optional[List[str]], point: str, n_boot: int, seed: int, fixed, compute,
               slice_tol: float):
    from . import batch as B
    from .frontier import frontier, run_curve
    from .runs import best_per, curve_points, load_runs, run_points

    runs = load_runs(paths)
    pts = run_points(runs, point)
    want = laws or list(ALL_LAWS)
    plan, skipped, extra = [], {}, {"runs": runs}
    src = f"{len(runs)} runs, {point} val_loss per run"
    convs = [compute] + [c for c in COMPUTE if c != compute]
    have_total = all(np.isfinite(r.flops_total).any() for r in runs)

    def add(law, cols, source, name="", conv=None, tag=None):
        fx = _fix_for(law, fixed, laws is not None)
        if fx is None:
            skipped[name or law] = "--fix names are not its parameters"
            return
        try:
            if law == "isoflop":
                from .isoflop import check_isoflop_points, group_slices
                C = check_isoflop_points(cols)["C"]
                if laws is None and sum(g.size >= 3 for g in group_slices(C, slice_tol)) < 3:
                    raise FitError("fewer than 3 budgets with 3 or more runs")
            else:
                check_points(law, cols, len(fx))
                if laws is None:
                    _enough_for_auto(law, cols, len(fx))
        except FitError as e:
            if laws is not None and (conv in (None, compute)):
                raise FitError(f"law {law!r} from runs: {e}") from None
            skipped[name or law] = str(e)
            return
        plan.append(_item(law, cols, source, name, conv, fx, tag))

    if "n" in want:
        totals = np.array([r.config.get("n_params_total") or np.nan for r in runs], float)
        shared_d = fixed_d_runs(pts)
        if shared_d is not None:  # L(N) at one D shared by the most sizes (the runs also vary D)
            sel = {k: v[shared_d] for k, v in dict(pts, N_total=totals).items()}
            how = f"{src}, the runs at D = {sel['D'][0]:,.0f} tokens (L(N) at a fixed D)"
        else:
            sel = best_per(dict(pts, N_total=totals), "N")
            how = f"{src}, lowest per N"
        add("n", {k: sel[k] for k in ("N", "loss")}, how)
        if np.isfinite(totals).all():
            add("n", {"N": sel["N_total"], "loss": sel["loss"]},
                f"{how}, against N_total = all parameters (config.json n_params_total)",
                name="n_total", tag=N_TOTAL_TAG)
        else:
            skipped["n_total"] = "runs without n_params_total in config.json (the embedding-included view)"
    if "d" in want:
        add("d", best_per(pts, "D"), f"{src}, lowest per D (D = unique tokens seen)")
    if "nd" in want:
        add("nd", pts, src)
    if "chinchilla" in want:
        add("chinchilla", pts, src)
    if "data-constrained" in want:
        dc = run_points(runs, point, tokens_seen=True)
        add("data-constrained", {k: dc[k] for k in ("N", "D", "U", "loss")}, f"{src}; D tokens seen, U unique tokens "
            "(the run's data cap, or its corpus size)")
    if "bcrit" in want or "ns" in want:
        g = B.gns_points(runs)
        se = B.se_points(runs)
        extra["batch"] = {"gns_points": int(g["B"].size), "se_points": int(se["points"]["B"].size),
                          "se_detail": se["detail"]}
        if g["B"].size:
            add("bcrit", g, "logged grad_noise_scale (tokens) against smoothed train loss")
        if se["points"]["B"].size:
            add("bcrit", se["points"], "B_crit from steps and tokens to reach a loss at several batch sizes",
                name="bcrit_se")
        if not g["B"].size and not se["points"]["B"].size:
            skipped["bcrit"] = "no grad_noise_scale logged and no runs differing only in batch size"
            if laws is not None and "bcrit" in laws:
                raise FitError("law 'bcrit' from runs: no grad_noise_scale logged and no runs differing only in batch size")
    if "ns" in want:
        cp = curve_points(runs)
        source = "every evaluation past 20% of each run"
        have_bcrit = [p for p in plan if p["law"] == "bcrit"]
        if have_bcrit:
            # S -> S_min with the B_crit(L) measured here (paper eq. 5.4)
            bc = fit("bcrit", have_bcrit[0]["cols"], n_boot=0, holdout=False)["params"]
            from .laws import b_crit, s_min
            cp = dict(cp, S=s_min(cp["S"], cp["B"], b_crit(cp["loss"], **bc)))
            source += ", S converted to S_min with the fitted B_crit(L)"
        else:
            source += ", S as run (no B_crit available to convert to S_min)"
        add("ns", {k: cp[k] for k in ("N", "S", "loss")}, source)
    extra["frontiers"] = {}
    for conv in convs:
        sfx = "" if conv == compute else f"_{conv}"
        if conv != compute and not have_total:
            for law in C_BASED:
                if law in want:
                    skipped[law + sfx] = "runs without flops_total in metrics.jsonl"
            continue
        if "c" in want:
            fr = None
            try:
                fr = frontier(runs, point=point, n_boot=n_boot, seed=seed, compute=conv)
            except FitError as e:
                if laws is not None and conv == compute:
                    raise
                skipped["c" + sfx] = str(e)
            if fr is not None:
                env = fr["envelope"]
                add("c", {"C": np.array(env["C"]), "loss": np.array(env["loss"])},
                    f"lower envelope of the loss curves (compute frontier), C = {conv}", name="c" + sfx, conv=conv)
                extra["frontiers"][conv] = fr
                if conv == compute:
                    extra["frontier_curves"] = [c for c in (run_curve(r, compute=conv) for r in runs) if c is not None]
        if "isoflop" in want:
            ip = run_points(runs, point, compute=conv, tokens_seen=True)
            cols = {k: ip[k] for k in ("N", "C", "loss", "D")}
            how = f"{src} (one point per run, slices by its C = {conv})"
            if conv != compute:
                moved = resliced_points(run_points(runs, point, compute=compute, tokens_seen=True), cols, slice_tol)
                if moved is not None:
                    cols, how = moved, (f"{src}: the budgets laid out in C = {compute}, each size's loss interpolated "
                                        f"(log-log, between its own runs) to the budgets' C = {conv}")
            add("isoflop", cols, how, name="isoflop" + sfx, conv=conv)
    from .study import study_from_runs
    extra["study"] = study_from_runs(runs, point)
    # keep the order of the laws for the report
    order = {k: i for i, k in enumerate(ALL_LAWS)}
    plan.sort(key=lambda p: order[p["law"]])
    return plan, skipped, extra


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


def _plan_groups(cols, label, col, laws, fixed, compute):
    """One plan per value of the --group column; names LAW.COL_VALUE, each item tagged with its group."""
    cells, values = _group_values(cols, col)
    plan, skipped = [], {}
    for val in values:
        sub = _subset(cols, cells == val)
        try:
            p, sk = _plan_table(sub, f"{label} [{col} = {val}]", laws, fixed, compute)
        except FitError as e:
            raise FitError(f"--group {col} = {val}: {e}") from None
        for it in p:
            it["name"] = _stem(it["name"], col, val)
            it["group"] = {"column": col, "value": val}
        plan += p
        skipped.update({_stem(k, col, val): v for k, v in sk.items()})
    return plan, skipped, values


def _side_by_side(fits, col, values):
    """{"column", "values", "params": {law: {param: {value: number}}}} over the grouped fits."""
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for f in fits:
        g = f.get("group")
        if not g:
            continue
        for k, v in f["params"].items():
            table.setdefault(f["law"], {}).setdefault(k, {})[g["value"]] = v
    return {"column": col, "values": list(values), "params": table}


def fit_and_report(paths=None, out=None, *, laws=None, point: str = "best", n_boot: int = N_BOOT, seed: int = 0,
                   compute: str = "nonembedding", fix=None, quiet: bool = True, csv: Optional[str] = None,
                   huber_delta: float = HUBER_DELTA, grid: str = "full", slice_tol: float = TOL_DEX,
                   slice_window: float = WINDOW_DEX, data=None, group: Optional[str] = None,
                   lr_fn=None, progress: Optional[bool] = None) -> dict:
    """Fit runs (paths: run or sweep directories) or a table (csv=FILE, or data= a dict of arrays or a
    DataFrame); returns the fits.json content ({"inputs", "fits": [...], "skipped", ...}) and, with
    out=REPORT_DIR, writes fits.json, one PNG per fit and report.md there. laws: None (auto), a list
    or a comma string; fix: a dict or "NAME=VALUE,..."; compute: "nonembedding" or "all"; group: a
    column of the table, one fit per law and value, named LAW.COL_VALUE, reported side by side
    (payload["groups"]). From runs, the paper's other systems (shape, architectures, other data,
    learning rate and schedule; fitting/ablations.py) go into payload["ablations"] when the runs vary
    that way; lr_fn(step, train_config_dict), if given (the trainer's schedule function, from a caller
    above fitting/), recomputes each run's lr curve instead of reading metrics.jsonl's `lr`; progress:
    tqdm bars on stderr for fits longer than 2 s (None: on a terminal only; False: never). Bad input
    raises FitError (one line)."""
    from .report import FitEntry, build_payload, print_summary, write_report

    laws = _parse_laws(laws)
    fixed = parse_fix(fix)
    paths = [str(p) for p in (paths or [])]
    if sum((bool(csv), bool(paths), data is not None)) > 1:
        raise FitError("give run/sweep directories, --csv FILE or a table, not more than one")
    if not csv and not paths and data is None:
        raise FitError("nothing to fit: give run or sweep directories, or --csv FILE")
    if group is not None and not (csv or data is not None):
        raise FitError(f"--group {group}: grouping needs a table (--csv FILE or a DataFrame), not run directories")
    if out:
        check_out_dir(str(out))
    if n_boot < 0:
        raise FitError(f"--n-boot must be >= 0, got {n_boot}")
    if not huber_delta > 0:
        raise FitError(f"--huber-delta must be positive, got {huber_delta}")
    if compute not in COMPUTE:
        raise FitError(f"--compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
    groups = None
    if csv or data is not None:
        from .runs import read_csv
        cols = read_csv(str(csv)) if csv else as_columns(data)
        label = str(csv) if csv else "table"
        if group is not None:
            plan, skipped, groups = _plan_groups(cols, label, group, laws, fixed, compute)
        else:
            plan, skipped = _plan_table(cols, label, laws, fixed, compute)
        from .study import study_from_table
        extra = {"csv": label, "study": study_from_table(cols) if group is None else None}
        inputs = f"CSV {csv}" if csv else f"a table of {len(next(iter(cols.values()), []))} rows"
        if group is not None:
            inputs += f", one fit per value of {group!r}"
    else:
        plan, skipped, extra = _plan_runs(paths, laws, point, n_boot, seed, fixed, compute, slice_tol)
        inputs = f"{len(extra['runs'])} run directories under {', '.join(paths)}"
    if not plan:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no law's columns are present"
        raise FitError(f"no law could be fitted ({why})")

    entries = []
    for it in plan:
        law, cols = it["law"], it["cols"]
        if law == "isoflop":
            try:
                res, boot = fit_isoflop(cols, tol_dex=slice_tol, window_dex=slice_window, n_boot=n_boot, seed=seed,
                                        fix=it["fix"], return_boot=True)
            except FitError as e:
                # planned on budgets alone; the slices' minima can still fail (not interior, too few).
                # In auto mode, or for the second compute convention (a grid at fixed non-embedding C
                # is not isoFLOP in all FLOPs), that skips the entry instead of losing the report.
                if laws is not None and it["compute"] in (None, compute):
                    raise
                skipped[it["name"]] = str(e)
                continue
            used = cols
        else:
            res, boot = fit(law, cols, delta=huber_delta, n_boot=n_boot, seed=seed, grid=grid, return_boot=True,
                            fix=it["fix"], progress=progress)
            used = check_points(law, cols, len(it["fix"]))
        if it["compute"]:
            res["compute"] = it["compute"]
            if csv or data is not None:
                res["compute_source"] = "table column C, in the convention declared by --compute"
        if it.get("group"):
            res["group"] = it["group"]
        res.update(it.get("tag") or {})
        entries.append(FitEntry(res, boot, used, source=str(it["source"]), name=it["name"]))
    study = extra.get("study")
    payload = build_payload(entries, frontiers=extra.get("frontiers"), compute=compute, batch=extra.get("batch"),
                            inputs=inputs, skipped=skipped, study=study["summary"] if study else None)
    if groups is not None:
        payload["groups"] = _side_by_side(payload["fits"], group, groups)
    if extra.get("runs"):
        from .positions import position_fits
        pos = position_fits([r.path for r in extra["runs"]])  # runs trained with --eval-positions
        if pos:
            payload["positions"] = pos
        from .ablations import ablations
        abl = ablations(extra["runs"], point=point, n_boot=n_boot, seed=seed, positions=pos, lr_fn=lr_fn)
        if abl.payload:  # only what the runs vary: fits.json is unchanged for runs that vary none of it
            payload["ablations"] = abl.payload
    else:
        abl = None
    if out:
        try:
            write_report(str(out), entries, payload, frontier_curves=extra.get("frontier_curves"), study=study,
                         ablations=abl)
        except OSError as e:
            raise write_error(str(out), e) from None
    if not quiet:
        print_summary(entries, skipped, out)
    return payload
