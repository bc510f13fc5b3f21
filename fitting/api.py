"""The function behind `flopscale fit`: plan which laws the inputs support, fit them, report.

    from flopscale.fitting import fit_and_report
    fits = fit_and_report(["sweeps/s/runs"], out="sweeps/s/report", n_boot=200)   # fits.json content
    fits = fit_and_report(csv="isoflops.csv", laws="isoflop", fix="a=0.5")

fitting/cli.py is the argparse layer over it (flag names are the CLI contract of docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np

from flopscale.fileio import atomic_write_bytes

from .ablations import ablations
from .backtest import backtest, largest_budget_split, load_points
from .estimator import N_BOOT, FitError, as_columns, check_points, fit, parse_fix
from .isoflop import TOL_DEX, WINDOW_DEX, fit_isoflop
from .laws import HUBER_DELTA, LAWS
from .plan import study_plans
from .positions import position_fits
from .report import print_summary, write_report
from .results import PANEL_FILES, FitEntry, FitResults
from .runs import read_csv
from .selection import (ALL_LAWS, COMPUTE, fixed_d_runs, parse_laws, plan_groups, plan_runs, plan_table,
                        resliced_points, side_by_side, to_s_min)
from .study import build_payload, study_from_table
from .writes import check_out_dir, write_error

__all__ = ["fit_and_report", "ALL_LAWS", "COMPUTE", "fixed_d_runs", "resliced_points"]


def fit_and_report(paths=None, out=None, *, laws=None, point: str = "best", n_boot: int = N_BOOT, seed: int = 0,
                   compute: str = "nonembedding", fix=None, quiet: bool = True, csv: Optional[str] = None,
                   huber_delta: float = HUBER_DELTA, grid: str = "full", slice_tol: float = TOL_DEX,
                   slice_window: float = WINDOW_DEX, data=None, group: Optional[str] = None,
                   lr_fn=None, progress: Optional[bool] = None, outlook: Optional[dict] = None) -> dict:
    """Fit runs (paths: run or sweep directories) or a table (csv=FILE, or data= a dict of arrays or a
    DataFrame); returns the fits.json content ({"inputs", "fits": [...], "skipped", ...}) and, with
    out=REPORT_DIR, writes fits.json, one PNG per fit and report.md there. laws: None (auto), a list
    or a comma string; fix: a dict or "NAME=VALUE,..."; compute: "nonembedding" or "all"; group: a
    column of the table, one fit per law and value, named LAW.COL_VALUE, reported side by side
    (payload["groups"]). From runs, the paper's other systems (shape, architectures, other data,
    learning rate and schedule; fitting/ablations.py) go into payload["ablations"] when the runs vary
    that way; lr_fn(step, train_config_dict), if given (the trainer's schedule function, from a caller
    above fitting/), recomputes each run's lr curve instead of reading metrics.jsonl's `lr`; progress:
    tqdm bars on stderr for fits longer than 2 s (None: on a terminal only; False: never); outlook, from
    runs, {"shape_fns", "n_ctx", "throughput"} (flopscale/planning.py, the caller above fitting/, the
    engine's exact N of a shape): payload["outlook"] holds plans at 10x and 100x the study's largest C
    (fitting/plan.py, with each fit's bootstrap draws) and a backtest of its largest budget from the
    smaller ones (fitting/backtest.py), and report.md a section on them. Bad input raises FitError
    (one line)."""

    laws = parse_laws(laws)
    fixed = parse_fix(fix)
    paths = [str(p) for p in (paths or [])]
    _check_request(paths, out, csv, data, group, n_boot, huber_delta, compute)
    table = bool(csv) or data is not None
    if table:
        plan, skipped, extra, groups, inputs = _plan_from_table(csv, data, group, laws, fixed, compute)
    else:
        plan, skipped, extra = plan_runs(paths, laws, point, n_boot, seed, fixed, compute, slice_tol)
        groups, inputs = None, f"{len(extra['runs'])} run directories under {', '.join(paths)}"
    if not plan:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no law's columns are present"
        raise FitError(f"no law could be fitted ({why})")
    def fit_one(it):
        return _fit_item(it, laws, compute, table, skipped, huber_delta=huber_delta, n_boot=n_boot, seed=seed,
                         grid=grid, slice_tol=slice_tol, slice_window=slice_window, progress=progress)

    # the bcrit fit an ns item converts S to S_min with goes first; each item is fitted once
    first = {it["s_min"]["bcrit"] for it in plan if it.get("s_min")}
    done = {it["name"]: fit_one(it) for it in plan if it["name"] in first}
    entries = []
    for it in plan:
        if it["name"] not in done:
            if it.get("s_min"):
                it = to_s_min(it, done[it["s_min"]["bcrit"]].fit["params"])
            done[it["name"]] = fit_one(it)
        if done[it["name"]] is not None:
            entries.append(done[it["name"]])
    study = extra.get("study")
    payload = build_payload(entries, frontiers=extra.get("frontiers"), compute=compute, batch=extra.get("batch"),
                            inputs=inputs, skipped=skipped, study=study["summary"] if study else None)
    if groups is not None:
        payload["groups"] = side_by_side(payload["fits"], group, groups)
    abl = _add_run_analyses(payload, extra.get("runs"), point, n_boot, seed, lr_fn)
    if outlook and not table:
        payload["outlook"] = study_outlook(payload, entries, paths, outlook, point, compute, n_boot, seed)
    payload["panels"] = dict(PANEL_FILES)  # what write_report draws: named whether or not it runs
    results = FitResults(payload, tuple(entries), study, extra.get("frontier_curves"), abl)
    if out:
        try:
            write_report(str(out), results)
            write_bootstrap(str(out), entries)
        except OSError as e:
            raise write_error(str(out), e) from None
    if not quiet:
        print_summary(entries, skipped, out)
    return payload


def _check_request(paths, out, csv, data, group, n_boot, huber_delta, compute) -> None:
    """FitError (one line) for a request that cannot run, before anything is read or fitted."""
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


def _plan_from_table(csv, data, group, laws, fixed, compute):
    """(plan, skipped, extra, group values or None, inputs line) for a CSV file or a table."""
    cols = read_csv(str(csv)) if csv else as_columns(data)
    label = str(csv) if csv else "table"
    groups = None
    if group is not None:
        plan, skipped, groups = plan_groups(cols, label, group, laws, fixed, compute)
    else:
        plan, skipped = plan_table(cols, label, laws, fixed, compute)
    extra = {"csv": label, "study": study_from_table(cols) if group is None else None}
    inputs = f"CSV {csv}" if csv else f"a table of {len(next(iter(cols.values()), []))} rows"
    if group is not None:
        inputs += f", one fit per value of {group!r}"
    return plan, skipped, extra, groups, inputs


def _fit_item(it, laws, compute, table, skipped, *, huber_delta, n_boot, seed, grid, slice_tol, slice_window,
              progress) -> Optional[FitEntry]:
    """Fit one planned item (once: nothing downstream refits it); None where an isoflop fit that
    auto mode or the second compute convention planned fails (recorded in skipped)."""
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
            return None
        used = cols
    else:
        res, boot = fit(law, cols, delta=huber_delta, n_boot=n_boot, seed=seed, grid=grid, return_boot=True,
                        fix=it["fix"], progress=progress)
        used = check_points(law, cols, len(it["fix"]))
    if it["compute"]:
        res["compute"] = it["compute"]
        if table:
            res["compute_source"] = "table column C, in the convention declared by --compute"
    if it.get("group"):
        res["group"] = it["group"]
    res.update(it.get("tag") or {})
    return FitEntry(res, boot, used, source=str(it["source"]), name=it["name"])


def _add_run_analyses(payload: dict, runs, point, n_boot, seed, lr_fn):
    """From runs: per-position fits and the paper's other systems (fitting/ablations.py) into the
    payload, only what the runs vary; returns the Ablations (their figures need it) or None."""
    if not runs:
        return None
    pos = position_fits([r.path for r in runs])  # runs trained with --eval-positions
    if pos:
        payload["positions"] = pos
    abl = ablations(runs, point=point, n_boot=n_boot, seed=seed, positions=pos, lr_fn=lr_fn)
    if abl.payload:  # only what the runs vary: fits.json is unchanged for runs that vary none of it
        payload["ablations"] = abl.payload
    return abl


def study_outlook(payload: dict, entries, paths, outlook: dict, point: str, compute: str, n_boot: int,
                  seed: int) -> dict:
    """{"plans": [plan at 10x, 100x the largest fitted C], "backtest": the law of the plans fitted on
    the smaller budgets, predicting the largest}; each part replaced by a one-line reason ("*_skipped")
    where the study cannot support it (fitted once here: the plans reuse the fits and their draws)."""
    out: dict = {}
    boot = {e.name: e.boot for e in entries if e.boot is not None}
    try:
        out["plans"] = study_plans(payload, boot=boot, seed=seed, **outlook)
    except FitError as e:
        out["plans_skipped"] = str(e)
        return out
    law = out["plans"][0]["law"]
    if law not in LAWS:  # Kaplan's route: L(N, S_min) with B_crit(L), two laws where a backtest scores one
        out["backtest_skipped"] = ("the plans follow Kaplan's route (L(N, S_min) with B_crit(L), two fitted laws) and a "
                                   "backtest scores one law on held-out points (`flopscale backtest --law` takes any one)")
        return out
    try:
        cols = load_points(paths=paths, law=law, point=point, compute=compute)
        out["backtest"] = backtest(cols, law, largest_budget_split(cols, "C"), n_boot=n_boot, seed=seed)
    except FitError as e:
        out["backtest_skipped"] = str(e)
    return out


BOOTSTRAP_FILE = "bootstrap.npz"  # beside fits.json: {fit name: (n_boot, n_params) draws}, plain arrays


def write_bootstrap(out_dir: str, entries) -> None:
    """Each fit's bootstrap draws (rows in the order of its ``params``) beside fits.json, so a later
    `flopscale plan --fits` gives its loss interval the parameter uncertainty too.  Numbers only:
    read back with np.load(..., allow_pickle=False)."""
    arrays = {}
    for e in entries:
        try:
            b = np.asarray(e.boot, float)
        except (TypeError, ValueError):  # an isoflop fit's draws are per slice, not a parameter matrix
            continue
        if b.ndim == 2 and b.size:
            arrays[e.name] = b
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(os.path.join(out_dir, BOOTSTRAP_FILE), buf.getvalue())


def read_bootstrap(fits_path: str) -> dict:
    """{fit name: draws} from the bootstrap.npz beside a fits.json; {} where there is none."""
    path = os.path.join(os.path.dirname(os.path.abspath(fits_path)), BOOTSTRAP_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise FitError(f"{path}: unreadable bootstrap draws ({e}); remove it to plan without them") from None
